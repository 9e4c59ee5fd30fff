"""The committed stubs and Envoy descriptor are what `make gen` writes from protos/."""

import subprocess
import sys

from tests.harness import ROOT


def test_generated_code_matches_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
