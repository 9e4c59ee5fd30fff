"""How the CLI prints: rich tables for people, or with `--json` the REST API's JSON (snake_case
fields, value names as strings, defaults printed) for scripts. Data goes to stdout; errors,
hints and progress to stderr."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from embedd_client.errors import EmbeddError


def as_dict(message: Message) -> dict[str, Any]:
    """A message as the REST API prints it."""
    raw = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _whole_numbers(raw)  # type: ignore[no-any-return]


def _whole_numbers(value: Any) -> Any:
    # Counts travel as doubles; JSON readers expect 500, not 500.0 (as REST prints them).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def error_body(err: EmbeddError) -> dict[str, Any]:
    """The REST error body for a failed call."""
    body: dict[str, Any] = {"code": err.reason or err.code().name.lower(), "message": err.message}
    if err.request_id:
        body["request_id"] = err.request_id
    if err.violations:
        body["details"] = [{"field": v.field, "description": v.description} for v in err.violations]
    return {"error": body}


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):  # e.g. a vector table's columns: one per line
        return "\n".join(cell(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items() if v not in ("", None))
    return str(value)


class Output:
    """One command's output, in the format it was asked for."""

    def __init__(self, as_json: bool, console: Console | None = None, err: Console | None = None) -> None:
        self.json = as_json
        self.console = console or Console(highlight=False, soft_wrap=not as_json)
        self.err = err or Console(stderr=True, highlight=False)

    def raw_json(self, value: Any) -> None:
        self.console.out(json.dumps(value, ensure_ascii=False), highlight=False)

    def message(self, message: Message, *, title: str | None = None) -> None:
        """One resource: its fields, one per line."""
        data = as_dict(message)
        if self.json:
            self.raw_json(data)
            return
        table = Table(show_header=False, box=None, title=title, title_justify="left", pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, value in data.items():
            table.add_row(key, escape(cell(value)))
        self.console.print(table)

    def listing(self, response: Message, items: str, columns: Sequence[str]) -> None:
        """A page of resources: a table of `columns`, and how to get the next page."""
        data = as_dict(response)
        if self.json:
            self.raw_json(data)
            return
        self.rows(data[items], columns)
        if data.get("next_cursor"):
            self.hint(f"more: --cursor {data['next_cursor']}")

    def rows(
        self, rows: Iterable[Mapping[str, Any]], columns: Sequence[str], title: str | None = None
    ) -> None:
        table = Table(title=title, title_justify="left")
        for column in columns:
            # Ids are copied into the next command: never broken across lines.
            is_id = column == "id" or column.endswith("_id")
            table.add_column(column, overflow="fold", no_wrap=is_id)
        count = 0
        for row in rows:
            table.add_row(*(escape(cell(row.get(c))) for c in columns))
            count += 1
        if count:
            self.console.print(table)
        else:
            self.hint("none")

    def hint(self, text: str) -> None:
        self.err.print(text, style="dim")

    def error(self, err: EmbeddError) -> None:
        if self.json:
            self.err.out(json.dumps(error_body(err), ensure_ascii=False), highlight=False)
            return
        self.err.print(f"[bold red]error[/] {escape(str(err))}")
