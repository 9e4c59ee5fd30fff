"""What the server's log says when the control plane is away (logs.py)."""

from __future__ import annotations

import io
import logging

from embedd_server.logs import configure_logging


def test_a_pool_reconnecting_to_a_restarting_control_plane_logs_one_line_per_try() -> None:
    """asyncpg logs each failed reconnect with a traceback; the fault suite's log check (no
    tracebacks) failed on every control-plane restart."""
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    try:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    except ConnectionRefusedError:
        logging.getLogger("asyncpg.pool").warning(
            "Failed to restore the pool connection floor; retrying", exc_info=True
        )
    text = out.getvalue()
    assert "Traceback" not in text
    assert "Failed to restore the pool connection floor" in text and "ConnectionRefusedError" in text
    assert len(text.strip().splitlines()) == 1
