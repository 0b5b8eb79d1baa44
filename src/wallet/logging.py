"""structlog set-up: key-value lines for people, JSON lines (WALLET_LOG_JSON=1) for machines."""

from __future__ import annotations

import logging

import structlog

from wallet.settings import Settings

_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}


def _escape_control_characters(
    logger: object, method_name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """Values can carry what a client sent (a path, a header): control characters in them are
    escaped so that no request can forge a log line or send terminal escape sequences."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = value.translate(_CONTROL)
    return event_dict


def configure_logging(settings: Settings) -> None:
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    renderer = (
        structlog.processors.JSONRenderer()
        if settings.log_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,  # the request id of the request being served
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _escape_control_characters,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
