"""Load a resolved model onto a device, and turn prompts or chat messages into token ids.

Models come from local files only (packaged, configured or made by the tests), never from a
hub at run time, so loading sets HF_HUB_OFFLINE and passes local_files_only.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from llmos.specs.channel import device_kind
from llmos.specs.modelspec import ModelSpec

from .quant import quantize
from .sampling import SamplingDefaults
from .tools import render_messages

MAX_CONTEXT = 32768  # cap for models that advertise huge windows the KV budget could never hold
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    name: str
    kind: str                 # "generate" | "embed"
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    context_length: int       # most tokens (prompt + generated, or one embedded text) per sequence
    bytes: int                # parameters + buffers on the device
    eos_token_ids: list[int]
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)   # for what a request leaves out


def _drop_gguf_dtype_advice(record: logging.LogRecord) -> bool:
    """transformers advises float32 for packed GGUF weights on every load; bf16 was measured
    faster here (see auto_dtype), so that one warning is noise in every boot's log."""
    return "fastest in float32" not in record.getMessage()


logging.getLogger("transformers.quantizers.quantizer_gguf").addFilter(_drop_gguf_dtype_advice)


def load(spec: ModelSpec, device: str = "cpu", dtype: str | None = None,
         on_stage: Callable[[str], None] = lambda stage: None) -> LoadedModel:
    """Load weights and tokenizer; fp32 on CPU and bf16 on CUDA unless dtype says otherwise ("auto": see auto_dtype),
    quantized as spec.quant says (quant.py). on_stage is told as each of its LOAD_STAGES begins (a GGUF's weights take most of the time)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    dev = torch.device(device)
    torch_dtype = _pick_dtype(dev, dtype)
    files = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    model_class = AutoModel if spec.kind == "embed" else AutoModelForCausalLM
    on_stage("reading weights")
    model = model_class.from_pretrained(spec.path, dtype=torch_dtype, local_files_only=True, **files)
    if spec.quant:       # before the move, a layer at a time: the device never holds the float weights
        quantize(model, dev, spec.quant)
    model.to(dev).eval()
    on_stage("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=True, **files)
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))   # tied: counted once
    return LoadedModel(spec.name, spec.kind, model, tokenizer, dev, torch_dtype,
                       _context_length(spec, model, tokenizer), size, _eos_ids(model, tokenizer),
                       SamplingDefaults.of(getattr(model, "generation_config", None)))


def encode_prompt(lm: LoadedModel, prompt: str | None, messages: list[dict] | None,
                  tools: list | None = None) -> list[int]:
    """Token ids for a plain prompt, or for chat messages through the model's chat template.

    The kernel has checked the arguments against the syscall table (exactly one of the two;
    messages of role and content); what only the model can say is whether it has a template.
    """
    tok = lm.tokenizer
    if messages is None:
        return tok(prompt).input_ids
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"model '{lm.name}' has no chat template: send a plain prompt instead of messages")
    messages, extra = render_messages(tok, messages, tools)
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
    # The template already wrote any BOS it wants; don't let the tokenizer add another.
    return tok(text, add_special_tokens=False).input_ids


def auto_dtype(device: str) -> str:
    """bf16 on CUDA and on CPUs that compute it natively (avx512_bf16, AMX), else fp32.

    On such CPUs bf16 decodes about 2.5x faster than fp32 for the default model and still
    answers correctly; elsewhere bf16 is emulated and slower.
    """
    if device_kind(device) == "cuda":
        return "bfloat16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def _pick_dtype(device: torch.device, name: str | None) -> torch.dtype:
    if name == "auto":
        name = auto_dtype(str(device))
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def _context_length(spec: ModelSpec, model, tokenizer) -> int:
    n = getattr(model.config, "max_position_embeddings", None) or MAX_CONTEXT
    st_config = Path(spec.path) / "sentence_bert_config.json"  # sentence-transformers' own limit
    if spec.kind == "embed" and st_config.is_file():
        n = min(n, json.loads(st_config.read_text()).get("max_seq_length") or n)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < n:
        n = limit
    return min(n, MAX_CONTEXT)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = [tokenizer.eos_token_id]
    gen = getattr(model, "generation_config", None)
    found = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids += found if isinstance(found, list) else [found]
    return sorted({i for i in ids if i is not None})
