"""Services: the plugin contract (hookspecs.py), the service host process, and the built-in services."""

from .hookspecs import ServiceError, Task, hookimpl

__all__ = ["ServiceError", "Task", "hookimpl"]
