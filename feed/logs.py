"""Logging for `feed serve`, `feed ingest` and `feed gateway`: text lines, or JSON (`log.format`).

JSON: one object a line, for a log shipper: `ts` (ISO 8601, UTC, milliseconds), `level`,
`logger`, `message`, and `exc_info` (the formatted traceback) or `stack_info` when present.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

import orjson

from feed.config import LogConfig

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object (orjson), on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def configure(config: LogConfig) -> None:
    """The root logger at `log.level`, writing to stderr in `log.format`."""
    logging.basicConfig(level=config.level.upper(), format=TEXT_FORMAT)
    logging.Formatter.converter = time.gmtime
    if config.format == "json":
        formatter = JsonFormatter()
        for handler in logging.getLogger().handlers:
            handler.setFormatter(formatter)
