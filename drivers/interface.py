"""The driver interface: what the driver process needs from a device, whatever runs the models.

The torch driver (torch_driver.py) implements it for cpu and cuda; another runtime implements
the same few methods and is served by the same loop (host.py) on the same typed channel
(specs/channel.py), so the kernel cannot tell them apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator

from llmos.specs import channel
from llmos.specs.channel import TokenEvent

Reply = channel.Result | channel.Error


class Driver(ABC):
    device: str

    @abstractmethod
    def hello(self) -> channel.Hello:
        """What this device offers the kernel: its memory budget, dtype and batch width."""

    @abstractmethod
    def load(self, msg: channel.Load, on_stage: Callable[[str], None]) -> channel.Loaded:
        """Load a model (slow: called on a thread, off the step loop); raise to report a failed load.
        Call on_stage(stage) as each of channel.LOAD_STAGES begins: it tells whoever waits."""

    def kv_usage(self) -> float | None:
        """The share of the device's KV cache in use (0..1), sent with each step's events; None: unknown."""
        return None

    def load_adapter(self, msg: channel.LoadAdapter) -> channel.AdapterLoaded | channel.AdapterFailed:
        """Install a LoRA adapter over a loaded model (PEFT files' bytes); a runtime without adapters refuses."""
        return channel.AdapterFailed(msg.model, msg.adapter, f"this driver ({type(self).__name__}) serves no adapters")

    def unload_adapter(self, msg: channel.UnloadAdapter) -> None:
        """Drop an adapter (nothing to do where none can be loaded)."""

    @abstractmethod
    def unload(self, model: str) -> None:
        """Drop a model and its KV cache."""

    @abstractmethod
    def submit(self, msg: channel.Submit) -> TokenEvent | None:
        """Queue a generation; return a failed TokenEvent instead if it cannot run."""

    @abstractmethod
    def cancel(self, rid: int) -> None:
        """Stop a generation and free its batch slot before the next step."""

    @abstractmethod
    def embed(self, msg: channel.Embed) -> channel.Result | channel.Error:
        """Embedding vectors for msg.input with msg.model."""

    def score(self, msg: channel.Score) -> channel.Result | channel.Error:
        """The summed log-loss of each of msg.texts under msg.model; a runtime that cannot score says so."""
        return channel.Error(msg.rid, "EINVAL", f"this driver ({type(self).__name__}) cannot score texts")

    def embed_slices(self, msg: channel.Embed, pause: Callable[[], None],
                     slice_s: Callable[[], float | None] = lambda: None) -> Generator[None, None, Reply]:
        """embed as slices of bounded work: the driver loop steps engines and answers pings at each
        yield, and pause() may be called within a slice for the same; slice_s() is how long a slice
        may last (None: as long as memory allows). By default, in one slice."""
        return self.embed(msg)
        yield   # a generator: the loop advances every call in progress the same way

    def score_slices(self, msg: channel.Score, pause: Callable[[], None],
                     slice_s: Callable[[], float | None] = lambda: None) -> Generator[None, None, Reply]:
        """score as slices of bounded work, as embed_slices. By default, in one slice."""
        return self.score(msg)
        yield

    def tune_threads(self) -> None:
        """Once a loop turn: fit the compute threads to the cores others leave (cpu_threads.py); by default nothing."""

    @abstractmethod
    def has_work(self) -> bool:
        """True while any generation is queued or running."""

    @abstractmethod
    def step(self, pause: Callable[[list[TokenEvent]], None] | None = None) -> list[TokenEvent]:
        """Advance every busy model by one step; one event per sequence that moved. A step may call
        pause(events) between its slices, to send early events and take in new submissions."""
