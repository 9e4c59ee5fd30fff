"""Structured logging: JSON lines (or console) with the request id bound per call."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to `stream` (stderr) in one format."""
    out = stream or sys.stderr
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(
        level=level.upper(), stream=out, format="%(levelname)s %(name)s %(message)s", force=True
    )
    logging.getLogger("grpc._cython.cygrpc").addFilter(_client_bytes_are_no_fault)
    logging.getLogger("asyncpg.pool").addFilter(_reconnects_are_no_fault)


def _client_bytes_are_no_fault(record: logging.LogRecord) -> bool:
    """grpc logs an ERROR with a traceback for every metadata value that is not UTF-8 (a
    client's `X-Environment-Id: \xff`), then decodes it as latin-1 and serves the call, which
    answers it properly (a 404 here). The client's bytes are no fault of the server: one
    warning line, without the traceback."""
    if record.getMessage().startswith("Invalid encoding on"):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
    return True


def _reconnects_are_no_fault(record: logging.LogRecord) -> bool:
    """While the control plane is down (a restart, a failover) asyncpg keeps reconnecting its
    pool and logs each failed try as a WARNING with a traceback. The reason, on one line, is
    what an operator needs; a traceback would say the server failed, and it did not."""
    if record.exc_info and record.getMessage().startswith("Failed to restore the pool connection floor"):
        exc = record.exc_info[1]
        record.msg, record.args = f"{record.getMessage()} ({exc.__class__.__name__}: {exc})", ()
        record.exc_info, record.exc_text = None, None
    return True
