"""structlog set-up: readable lines on a terminal, JSON lines in the state dir's kernel.log."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import structlog

from llmos.specs.protocol import KERNEL_LOG


def configure(state_dir: Path | None, level: str = "info", json_console: bool | None = None) -> None:
    """Route structlog through stdlib logging so one event reaches both the console and the file."""
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, timestamper]
    structlog.configure(
        processors=shared + [structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=False,
    )
    if json_console is None:
        json_console = not sys.stderr.isatty()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer() if json_console else structlog.dev.ConsoleRenderer(colors=True)],
        foreign_pre_chain=shared,
    ))
    handlers: list[logging.Handler] = [console]
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(state_dir / KERNEL_LOG)
        file.setFormatter(structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.JSONRenderer()],
            foreign_pre_chain=shared,
        ))
        handlers.append(file)
    root = logging.getLogger()
    root.handlers = handlers
    root.setLevel(level.upper())


def get(name: str):
    return structlog.get_logger(name)
