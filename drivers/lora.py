"""LoRA adapters served in the shared batch: many adapters over one copy of the base weights.

Each target projection of the base model (q_proj, v_proj, ...) is wrapped once, when the first
adapter that names it is loaded, in a `LoRALinear` that holds every loaded adapter's (A, B·scale)
for it. Before each layer the runner says which token rows of the step belong to which adapter
(`AdapterRows`); the wrapper adds x[rows] @ Aᵀ @ (B·scale)ᵀ into those rows: one matmul pair per
adapter present in the step, per module. Rows without an adapter get the base alone, and a step
without adapters costs nothing more than the base (the wrapper returns base(x) at once), which
is also what a CUDA graph captures: steps with adapters run eagerly (runner.py).

Adapters arrive as the bytes of PEFT's files (the kernel reads them; a driver never touches the
state dir): adapter_config.json and adapter_model.safetensors, keys such as
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`. Anything this cannot apply
exactly (DoRA, embedding or bias LoRA, a module the base lacks, wrong shapes) is refused whole
with a ValueError that says what, before any weight is installed.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import torch
from torch import nn

PREFIX = "base_model.model."
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# adapter id -> the token rows of the step that use it; None: every row (a whole forward through it)
AdapterRows = dict[str, "torch.Tensor | None"]


class LoRALinear(nn.Module):
    """A base projection plus the low-rank updates of the adapters present in the step."""

    def __init__(self, base: nn.Module, state: "LoRAModel"):
        super().__init__()
        self.base = base
        self.state = state
        self.in_features, self.out_features = features(base)
        self.weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}   # adapter -> (A [r, in], B·scale [out, r])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        active = self.state.active
        if not active:
            return y
        for adapter, rows in active.items():
            weights = self.weights.get(adapter)
            if weights is None:          # this adapter leaves this module alone
                continue
            a, b = weights
            if rows is None:
                y = y + (x @ a.t()) @ b.t()
            else:
                y.index_add_(0, rows, (x.index_select(0, rows) @ a.t()) @ b.t())
        return y


def features(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a projection: nn.Linear and drivers/quant.Int8Linear both say so."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.in_features, module.out_features
    raise ValueError(f"{module.__class__.__name__} is not a linear projection")


class LoRAModel:
    """The adapters loaded over one base model, and which rows use which in the running step."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, device: torch.device):
        self.model = model
        self.dtype = dtype
        self.device = device
        self.active: AdapterRows | None = None
        self.bytes: dict[str, int] = {}                  # adapter -> bytes its weights take
        self.modules: dict[str, LoRALinear] = {}         # module path -> its wrapper

    def add(self, adapter: str, files: dict[str, bytes]) -> int:
        """Install an adapter from PEFT's files; the bytes its weights take. A second load of
        the same id replaces it (a newer version)."""
        config = parse_config(files)
        pairs = self._checked_pairs(read_tensors(files), config)
        self.remove(adapter)
        nbytes = 0
        for path, (a, b) in pairs.items():
            wrapper = self._wrapper(path)
            a = a.to(self.device, self.dtype)
            b = (b.to(torch.float32) * config["scale"]).to(self.device, self.dtype)
            wrapper.weights[adapter] = (a, b)
            nbytes += a.nbytes + b.nbytes
        self.bytes[adapter] = nbytes
        return nbytes

    def remove(self, adapter: str) -> None:
        for wrapper in self.modules.values():
            wrapper.weights.pop(adapter, None)
        self.bytes.pop(adapter, None)

    def __contains__(self, adapter: str) -> bool:
        return adapter in self.bytes

    @contextmanager
    def using(self, rows: AdapterRows | None):
        """Forward passes inside run with these adapters on these rows."""
        before, self.active = self.active, rows
        try:
            yield
        finally:
            self.active = before

    def _wrapper(self, path: str) -> LoRALinear:
        wrapper = self.modules.get(path)
        if wrapper is None:
            parent_path, _, leaf = path.rpartition(".")
            parent = self.model.get_submodule(parent_path)
            wrapper = self.modules[path] = LoRALinear(getattr(parent, leaf), self)
            setattr(parent, leaf, wrapper)
        return wrapper

    def _checked_pairs(self, tensors: dict[str, torch.Tensor], config: dict) -> dict[str, tuple]:
        """module path -> (A, B), every pair checked against the base before anything is installed."""
        halves: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            if not key.startswith(PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
                raise ValueError(f"adapter tensor '{key[:200]}' is not a LoRA A or B weight of a projection "
                                 f"(embedding, bias and DoRA adapters are not served)")
            path, half = key[len(PREFIX):].rsplit(".", 2)[0], key.rsplit(".", 2)[1]
            halves.setdefault(path, {})[half] = tensor
        if not halves:
            raise ValueError("adapter_model.safetensors holds no LoRA weights")
        pairs = {}
        for path, half in halves.items():
            if path.rsplit(".", 1)[-1] not in TARGETS:
                raise ValueError(f"adapter targets '{path}'; served targets are {', '.join(TARGETS)}")
            if set(half) != {"lora_A", "lora_B"}:
                raise ValueError(f"adapter has only {', '.join(half)} for '{path}'")
            module = self.modules.get(path) or _submodule(self.model, path)
            n_in, n_out = features(module)
            a, b = half["lora_A"], half["lora_B"]
            if a.dim() != 2 or b.dim() != 2 or a.shape[1] != n_in or b.shape[0] != n_out or a.shape[0] != b.shape[1]:
                raise ValueError(f"adapter weights for '{path}' are A {list(a.shape)}, B {list(b.shape)}; the base's "
                                 f"projection takes {n_in} in and gives {n_out} out (an adapter of another base?)")
            pairs[path] = (a, b)
        return pairs


def _submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"the base model has no module '{path}' (an adapter of another base?)") from None


def parse_config(files: dict[str, bytes]) -> dict:
    """adapter_config.json's fields that change the math, with the scale they give; ValueError if unusable."""
    raw = files.get("adapter_config.json")
    if raw is None:
        raise ValueError("adapter_config.json is missing")
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"adapter_config.json is not JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise ValueError("adapter_config.json is not a LoRA adapter's (peft_type LORA)")
    if config.get("use_dora") or config.get("fan_in_fan_out"):
        raise ValueError("DoRA and fan_in_fan_out adapters are not served")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or r <= 0 or not isinstance(alpha, (int, float)):
        raise ValueError("adapter_config.json needs a positive integer r and a number lora_alpha")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError("adapters with a rank_pattern or alpha_pattern are not served")
    scale = alpha / r ** 0.5 if config.get("use_rslora") else alpha / r
    return {"r": r, "scale": scale}


def read_tensors(files: dict[str, bytes]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    raw = files.get("adapter_model.safetensors")
    if raw is None:
        raise ValueError("adapter_model.safetensors is missing")
    try:
        return load(raw)
    except (SafetensorError, ValueError) as exc:
        raise ValueError(f"adapter_model.safetensors cannot be read: {exc}") from None
