"""Logging set-up, called only by entrypoints.

Modules log with ``logging.getLogger(__name__)`` and lazy ``%s`` arguments;
``LOG_FORMAT=json`` switches the handler to JSON lines for production.
"""

from __future__ import annotations

import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("user", "device", "conn", "conversation", "entry"):
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure(level: str = "INFO", fmt: str = "text", service: str = "switchboard") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-connection open/close lines of websockets and index notices of redisvl
    # are noise at INFO; their warnings still show.
    for noisy in ("websockets.server", "redisvl.index.index", "langgraph.checkpoint.redis.aio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
