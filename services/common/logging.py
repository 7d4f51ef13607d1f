"""Structured JSON logs with patient identifiers masked everywhere in a line.

Masking runs on the rendered line, not on chosen fields, so a phone number inside an
exception text, a SQL parameter or a third-party library's message is caught too.
Standard-library loggers (asyncpg, nats, grpc) are routed through the same renderer.
"""
from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

# Mainland mobile: 1[3-9] and nine more digits, not part of a longer digit run.
_MOBILE = re.compile(r"(?<!\d)(1[3-9]\d)(\d{4})(\d{4})(?!\d)")
# Resident ID: 17 digits and a digit or X, not part of a longer alphanumeric run.
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])(\d{3})(\d{11})(\d{3}[\dXx])(?![0-9A-Za-z])")


def mask_pii(text: str) -> str:
    """`13812341234` -> `138****1234`; `110101199003071234` -> `110***********1234`."""
    text = _ID_NUMBER.sub(lambda m: m.group(1) + "*" * 11 + m.group(3)[-4:], text)
    return _MOBILE.sub(lambda m: m.group(1) + "****" + m.group(3), text)


class _MaskingRenderer:
    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer(ensure_ascii=False)

    def __call__(self, logger: Any, name: str, event_dict: dict[str, Any]) -> str:
        return mask_pii(self._json(logger, name, event_dict))


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]


def configure(level: str = "INFO", service: str = "", stream: Any = None) -> None:
    """Idempotent: tests and entrypoints may both call it."""
    stream = stream or sys.stderr
    renderer = _MaskingRenderer()
    structlog.configure(
        # Level first: a disabled level (e.g. the edge's per-call DEBUG line) costs one check,
        # not a time stamp and a render that the stdlib logger would then throw away.
        processors=[structlog.stdlib.filter_by_level, *_shared_processors(),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_consortium", False):
            root.removeHandler(old)
    handler._consortium = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    if service:
        structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str = "consortium") -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
