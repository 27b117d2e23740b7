"""The driver interface: what the kernel needs from a device, whatever runs the models.

The torch driver (host.py) implements it for cpu and cuda; a remote driver or another
runtime implements the same few methods and speaks the same driver channel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Driver(ABC):
    device: str

    @abstractmethod
    def memory(self) -> dict:
        """{kind, total_bytes, free_bytes}: the budget this device offers the kernel."""

    @abstractmethod
    def load(self, name: str, spec: dict, kv_bytes: int) -> dict:
        """Load a model (may be slow; called off the step loop). Returns {bytes, kv_bytes, context_length, load_s, kind}."""

    @abstractmethod
    def unload(self, name: str) -> None:
        """Drop a model and its KV cache."""

    @abstractmethod
    def submit(self, msg: dict) -> list | None:
        """Queue a generation request; return an error event instead if it cannot run."""

    @abstractmethod
    def cancel(self, rid: int) -> None:
        """Stop a generation and free its batch slot before the next step."""

    @abstractmethod
    def embed(self, msg: dict) -> dict:
        """Embedding vectors for msg['input'] with msg['model']."""

    @abstractmethod
    def has_work(self) -> bool:
        """True while any generation is queued or running."""

    @abstractmethod
    def step(self) -> list:
        """Advance every busy model by one step; one event per sequence that moved."""
