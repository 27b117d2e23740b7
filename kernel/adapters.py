"""Adapters: LoRA weights over a base model, named `BASE:NAME`, owned by the principal that trained them.

The layout on disk is the contract between fine-tune jobs (which write adapters) and inference
(which serves them). Each adapter is a folder in PEFT's format (`adapter_config.json`,
`adapter_model.safetensors`) plus `llmos.json`, its metadata:
{base, name, principal, version, created, data_sha256, hyperparameters, eval, shared}.

    STATE_DIR/adapters/<principal>/<base>/<name>/

A folder appears whole (written elsewhere in the state dir, then renamed into place), so a reader
never sees half an adapter. Bases are registry or config names (never paths), so every part of the
path is a plain name checked by NAME.
"""

from __future__ import annotations

import re
from pathlib import Path

ADAPTERS_DIR = "adapters"
META_FILE = "llmos.json"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")    # an adapter's name, and a base's as a path part
SEPARATOR = ":"


class AdapterNameError(ValueError):
    """Not a `BASE:NAME` an adapter can have; the message says why."""


def split_name(model: str) -> tuple[str, str] | None:
    """(base, adapter) for `BASE:NAME`; None for a plain model name (no separator)."""
    if SEPARATOR not in model:
        return None
    base, _, name = model.rpartition(SEPARATOR)
    for part, what in ((base, "base model"), (name, "adapter")):
        if not NAME.fullmatch(part) or part in (".", ".."):
            raise AdapterNameError(f"'{model[:200]}': the {what} name must be 1-64 of A-Z a-z 0-9 . _ - "
                                   f"starting with a letter or digit")
    return base, name


def adapter_dir(state_dir: Path, principal: str, base: str, name: str) -> Path:
    """Where principal's adapter `base:name` lives (whether or not it exists)."""
    for part in (principal, base, name):
        if not NAME.fullmatch(part) or part in (".", ".."):
            raise AdapterNameError(f"'{part[:200]}' cannot name a folder of an adapter")
    return state_dir / ADAPTERS_DIR / principal / base / name
