"""One logging setup: one line per event, JSON by default, plain text for people.

Extra context goes in ``logger.info("claimed work", extra={"fields": {...}})`` and
lands as top-level keys of the JSON line, so log search can filter on them.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_RESERVED = set(vars(logging.makeLogRecord({})))
# kopf attaches its whole OperatorSettings to every record; k8s_skip is its own flag.
_DROPPED = {"fields", "message", "asctime", "settings", "k8s_skip"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and key not in _DROPPED:
                line[key] = value
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).replace("\n", " | ")
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        base = f"{record.levelname.lower():7s} {record.name}: {record.getMessage()}"
        return f"{base} {tail}".rstrip()


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Idempotent: replaces the root handlers, so calling twice does not double lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in (
        "botocore",
        "urllib3",
        "asyncio",
        "web3",
        "kubernetes",
        "kopf.objects",
        "aiohttp.access",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
