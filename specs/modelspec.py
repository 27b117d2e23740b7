"""What the kernel tells a driver about a model (ModelSpec), and the model names and quantizations
every layer may name: the contract. Finding a model's files is the kernel's (kernel/registry.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBED_MODEL = "minilm-l6-v2"
SERVICES_EMBED_ENV = "LLMOS_SERVICES_EMBED_MODEL"   # the operator's choice of the services' embedding model
CACHE_DIR_ENV = "LLMOS_CACHE_DIR"   # where a driver keeps weights it derives (a Q8_0 copy of a GGUF); the kernel
                                    # sets it to STATE_DIR/cache for its own drivers

QUANTS = ("int8",)   # load_model's quant besides "none"; a config's [models.NAME] quant
QUANT_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")   # every weight matrix an nn.Linear or the embedding


@dataclass(frozen=True)
class ModelSpec:
    name: str            # the name the user asked for, as the kernel lists it
    kind: str            # "generate" | "embed"
    path: str            # a transformers folder (for GGUF: the folder holding the file)
    gguf_file: str | None
    source: str          # "config" | "package:NAME" | "path"
    quant: str | None = None   # "int8": weight matrices quantized as the driver loads it

    def to_wire(self) -> dict:
        return asdict(self)
