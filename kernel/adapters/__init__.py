"""Adapters: LoRA weights over a base model, named `BASE:NAME`, owned by the principal that trained them.

The room, in two parts: store.py holds them on disk (the layout fine-tune jobs write and inference
reads, their names, who may use which, sharing); table.py holds them loaded, over every copy of their
base, charged and evicted like models. The syscalls that name them are in kernel/syscalls/adapters.py
(adapters, adapter_share, load_model of a `BASE:NAME`); infer and score reach them through
kernel/syscalls/inference.py's model_and_adapter. The driver's side is drivers/lora.py.
"""

from .store import (META_FILE, NAME, PEFT_FILES, AdapterInfo, AdapterNameError, AdapterNotFound, AdapterStore,
                    BadAdapter, adapter_dir, adapter_parts, split_name)
from .table import AdapterEntry, AdapterTable

__all__ = ["META_FILE", "NAME", "PEFT_FILES", "AdapterInfo", "AdapterNameError", "AdapterNotFound", "AdapterStore",
           "BadAdapter", "adapter_dir", "adapter_parts", "split_name", "AdapterEntry", "AdapterTable"]
