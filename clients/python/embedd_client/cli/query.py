"""`embedd query VT "text"`: the closest rows, as a table of hits (step 6)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from embedd.v1 import query_pb2
from google.protobuf import json_format, struct_pb2

from embedd_client.cli.context import JsonOption, session
from embedd_client.cli.output import as_dict


def _filters(text: str | None) -> struct_pb2.Struct | None:
    if text is None:
        return None
    try:
        return json_format.Parse(text, struct_pb2.Struct())
    except json_format.ParseError as err:
        raise typer.BadParameter(f"not a JSON object: {err}", param_hint="--filter") from None


def query(
    ctx: typer.Context,
    vector_table_id: str,
    text: Annotated[str, typer.Argument(help="What to look for.")],
    limit: Annotated[int, typer.Option(help="Hits, 1-100.")] = 10,
    filter_json: Annotated[
        str | None,
        typer.Option("--filter", help='Metadata filters as JSON, e.g. \'{"price": {"lte": 150}}\'.'),
    ] = None,
    min_score: Annotated[float | None, typer.Option(help="Drop hits scoring below this (0-1).")] = None,
    show_text: Annotated[bool, typer.Option("--text", help="Show the embedded text.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Semantic search with metadata filters."""
    request = query_pb2.QueryVectorTableRequest(
        vector_table_id=vector_table_id,
        query=text,
        limit=limit,
        filters=_filters(filter_json),
        min_score=min_score,
        include_embedded_text=show_text,
    )
    with session(ctx, as_json) as (client, out):
        response = client.query.QueryVectorTable(request)
        if out.json:
            out.raw_json(as_dict(response))
            return
        hits = [as_dict(hit) for hit in response.results]
        fields = sorted({key for hit in hits for key in hit["metadata"]})
        rows = [
            {
                "#": str(rank),
                "id": hit["id"],
                "score": f"{hit['score']:.3f}",
                **{key: _value(hit["metadata"].get(key)) for key in fields},
                "text": hit.get("embedded_text", ""),
            }
            for rank, hit in enumerate(hits, start=1)
        ]
        columns = ["#", "id", "score", *fields, *(["text"] if show_text else [])]
        out.rows(rows, columns, title=f"{len(hits)} hits for {text!r}")


def _value(value: object) -> object:
    return value if value is None or isinstance(value, str | bool) else json.dumps(value)
