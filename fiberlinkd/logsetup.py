"""Logging to stderr, one line per event with ``key=value`` fields (or JSON lines).

No timestamps by default: journald adds them. Pass fields with ``extra={"fields": {...}}``
or use :func:`kv`. Secrets are never passed to the logger.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


def kv(**fields: Any) -> dict[str, Any]:
    """``log.info("tip settled", extra=kv(tip=tip_id, ms=12))``."""
    return {"fields": fields}


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [f"level={record.levelname.lower()}", f"logger={record.name}"]
        parts.append(f"msg={_quote(record.getMessage())}")
        fields: dict[str, Any] = getattr(record, "fields", {})
        parts.extend(f"{key}={_quote(value)}" for key, value in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update(getattr(record, "fields", {}))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # hypercorn's access log is noise at our volume; its errors still come through.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
