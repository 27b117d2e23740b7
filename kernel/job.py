"""One fine-tune job: its record (job.json), its progress, its turns, and what it needs on a device.

kernel/jobs.py runs jobs; this is what a job is, and the estimate its memory reservation is made of.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

FINISHED = ("done", "failed", "cancelled")
RATE_SMOOTHING = 0.3           # weight of the newest step in tokens/s and seconds per step


class DriverRestarted(Exception):
    """The job's driver died: the job starts again from its last checkpoint once the model is back."""


@dataclass(eq=False)
class TrainTurn:
    """One step of a job, as the device's fair scheduler sees it (kernel/scheduler.Schedulable)."""
    rid: int                      # negative: apart from requests' ids in the device's running window
    share: int                    # the job's pid in the scheduler
    device: str
    job: str
    step: int
    seq: int
    call: str = "train"
    priority: int = 0
    deadline: float | None = None


@dataclass(eq=False)
class Job:
    record: dict                  # job.json: what survives a restart
    pid: int                      # its share in the fair scheduler and its reservation's owner (negative)
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)   # what its driver says about it
    task: asyncio.Task | None = None
    turn: TrainTurn | None = None
    device: str | None = None
    handle: int | None = None     # its device-memory reservation
    reserved: int = 0
    cancelling: bool = False
    writing: asyncio.Future | None = None    # its latest write of files, on a thread
    tokens_per_s: float = 0.0
    step_s: float = 0.0

    @property
    def id(self) -> str:
        return self.record["job"]

    @property
    def owner(self) -> str:
        return self.record["owner"]

    @property
    def state(self) -> str:
        return self.record["state"]

    def stepped(self, step: int, loss: float, tokens: int, took_s: float) -> None:
        """A step ended, `took_s` after its turn was queued: progress, and smoothed rates for the ETA."""
        self.record["step"], self.record["loss"] = step, round(loss, 5)
        rate = tokens / took_s if took_s > 0 else 0.0
        a = RATE_SMOOTHING if self.step_s else 1.0
        self.tokens_per_s = a * rate + (1 - a) * self.tokens_per_s
        self.step_s = a * took_s + (1 - a) * self.step_s

    def describe(self) -> dict:
        r = self.record
        left = r["steps"] - r["step"]
        return {"job": r["job"], "model": f"{r['base']}:{r['name']}", "owner": r["owner"], "state": r["state"],
                "step": r["step"], "steps": r["steps"], "loss": r.get("loss"), "tokens_per_s": round(self.tokens_per_s, 1),
                "eta_s": round(left * self.step_s, 1) if self.step_s and r["state"] == "running" else None,
                "device": self.device, "reserved_bytes": self.reserved, "error": r.get("error", ""),
                "created": r["created"]}


def steps_of(examples: int, hyper: dict) -> int:
    return hyper["epochs"] * math.ceil(examples / hyper["batch_size"])


def train_bytes(weight_bytes: int, shape: dict, hyper: dict) -> int:
    """What training needs on the device beyond the served model: the copy it trains, the LoRA
    weights with their gradients and AdamW's two moments (fp32), and activations kept for the
    backward pass (the residual stream and MLP of each layer, and the logits, per token)."""
    hidden, inter = shape.get("hidden_size", 1024), shape.get("intermediate_size", 4096)
    layers, vocab = shape.get("num_hidden_layers", 24), shape.get("vocab_size", 50000)
    heads = shape.get("num_attention_heads", 16)
    kv = hidden * shape.get("num_key_value_heads", heads) // max(1, heads)
    dims = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (hidden, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    lora = layers * sum(hyper["rank"] * sum(dims[m]) for m in hyper["target_modules"])
    tokens = hyper["batch_size"] * hyper["max_seq_len"]
    activations = tokens * (layers * (12 * hidden + 4 * inter) + 3 * vocab) * 4
    return weight_bytes + lora * 4 * 4 + activations


def model_shape(path: str) -> dict:
    """The sizes in a model folder's config.json ({} for a model without one, e.g. a GGUF file)."""
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
