"""The `llmos` command, a package of small modules: one per family of subcommands, each handler
beside its options (click). Plugins add subcommands through the `register_commands` hook;
common.py holds what their commands share with ours, exits.py how a command fails (`raise fail(ERRNO, message)`).
"""

from llmos.specs.units import format_size as size   # plugins' name for it

from .app import cli, main
from .common import TEXT, connect, echo_stream, read_input, read_text, table, typed_lines, utf8_text
from .exits import CommandFailed, fail

__all__ = ["cli", "main", "CommandFailed", "TEXT", "connect", "echo_stream", "fail", "read_input", "read_text", "size",
           "table", "typed_lines", "utf8_text"]
