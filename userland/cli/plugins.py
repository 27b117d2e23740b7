"""Subcommands that plugins add through the `register_commands` hook, as simonw/llm's plugins do.

They come from the same plugins as the service host's services (services/plugins.py finds them:
the built-ins, the `llmos.services` entry points, LLMOS_PLUGINS...). The hook receives a
register(command) callback; this module owns the resulting table: the first to take a name keeps
it (the built-in commands, then plugins in discovery order), and a plugin whose registration fails
is reported on stderr and skipped, with nothing of it added.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import pluggy

BUILT_IN = "llmos"      # the owner of the commands in userland/cli


class RegistrationError(ValueError):
    """A plugin registered something that is not a usable command; the message says what to fix."""


def add_commands(group: click.Group, pm: pluggy.PluginManager) -> None:
    """Call each plugin's register_commands on its own and add what it registered to `group`."""
    owners = {name: BUILT_IN for name in group.commands}
    for impl in pm.hook.register_commands.get_hookimpls():      # in registration order: built-ins first
        plugin = pm.get_name(impl.plugin) or repr(impl.plugin)
        mine: dict[str, click.Command] = {}

        def register(command: click.Command, _plugin=plugin, _mine=mine) -> None:
            if not isinstance(command, click.Command):
                raise RegistrationError(f"register() takes a click.Command, got {type(command).__name__}")
            if command.name in owners or command.name in _mine:
                raise RegistrationError(f"command '{command.name}' is already registered by "
                                        f"{owners.get(command.name, _plugin)}")
            _mine[command.name] = command

        try:
            impl.function(**{arg: register for arg in impl.argnames})
        except Exception as exc:
            report(plugin, exc)
            continue
        for name, command in mine.items():
            owners[name] = plugin
            group.add_command(command)


def add_installed_commands(group: click.Group) -> None:
    """The commands of every plugin the environment allows; a plugin that fails is reported, not fatal."""
    from llmos.services import plugins      # here: `llmos ps` never imports a plugin

    try:
        pm, failed = plugins.discover()
    except Exception as exc:     # the built-in commands never depend on the plugins
        click.echo(f"llmos: no plugin commands: {exc.__class__.__name__}: {exc}", err=True)
        return
    for f in failed:
        click.echo(f"llmos: plugin {f['plugin']} not loaded: {f['error']}", err=True)
    add_commands(group, pm)


def report(plugin: str, exc: Exception) -> None:
    click.echo(f"llmos: plugin {plugin}: its commands are not available: {exc.__class__.__name__}: {exc}", err=True)
