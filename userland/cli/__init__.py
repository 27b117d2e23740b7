"""The `llmos` command, a package of small modules: one per family of subcommands, each handler
beside its options (click). Plugins add subcommands through the `register_commands` hook;
common.py holds what their commands share with ours.
"""

from .app import cli, main
from .common import connect, echo_stream, size, table, typed_lines

__all__ = ["cli", "main", "connect", "echo_stream", "size", "table", "typed_lines"]
