"""The `embedd` command: the Embedd API from a terminal (`embedd --help`).

Needs the `cli` extra (typer, rich): `pip install 'embedd-client[cli]'`.
"""

from __future__ import annotations

import sys

_CLI_DEPENDENCIES = {"typer", "rich"}


def main() -> None:
    try:
        from embedd_client.cli.app import app  # noqa: PLC0415 - says what is missing instead
    except ModuleNotFoundError as err:
        if err.name not in _CLI_DEPENDENCIES:
            raise
        print("the embedd command needs its extra: pip install 'embedd-client[cli]'", file=sys.stderr)
        sys.exit(2)
    app()
