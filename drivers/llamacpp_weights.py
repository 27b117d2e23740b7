"""Which weights llama.cpp multiplies: the GGUF file's own, or a Q8_0 copy of them made for batches.

A decode step of several sequences is a matrix product, and llama.cpp's CPU code has a blocked one
(llamafile's tinyBLAS) only for some weight types: F32, F16, BF16, Q8_0, Q4_0, Q5_0. For the others
(Q4_1, Q5_1, the K-quants: the common downloads) it takes one dot product per weight row and
sequence, so a batch costs nearly what the same sequences would one after another. Measured on a
2-core AVX2 EPYC in one process (benchmarks/llamacpp_weights.py, results/llamacpp-weights-avx2.txt),
SmolLM2-135M's own Q4_1 file makes 117 tok/s for one sequence and 208 for sixteen; a Q8_0 copy of the
same weights makes 117 and 305.

So for a file of another type (up to COPY_MAX_BYTES) the driver makes a Q8_0 copy once (llama.cpp's
own quantizer: 0.5 s for this model; kept in the cache directory for the next load) and times a
decode step of each at one and at many sequences (engine_pair.pick_weights): the copy is kept where
it is as fast for one sequence and faster for many, which is where a small model's step is
compute-bound. A model whose lone stream is bound by reading its weights keeps its file (8.5 bits a
weight against 4.5 would slow that stream). Q8_0 of 4-bit weights is close to exact: each block's 8-bit step is
about a sixteenth of its 4-bit one (the quality figures are in benchmarks/README.md).

LLMOS_LLAMACPP_WEIGHTS=file or q8_0 in the kernel's environment pins the choice instead of measuring.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import time
from pathlib import Path

from llmos.specs.modelspec import CACHE_DIR_ENV

WEIGHTS_ENV = "LLMOS_LLAMACPP_WEIGHTS"
WEIGHTS = ("measure", "file", "q8_0")
MAX_COPIES = 8          # copies kept in the cache directory; the least recently used go first
COPY_MAX_BYTES = 2 << 30  # files above this are measured as they are, unless the operator pins q8_0
PARTIAL_MAX_AGE_S = 3600  # a partial copy this old was left by a driver that died making it
Q8_0 = 7                # llama_ftype LLAMA_FTYPE_MOSTLY_Q8_0
# file types (general.file_type) that llama.cpp multiplies in blocks already: a copy would gain nothing
BATCHED_FILE_TYPES = {0: "F32", 1: "F16", 32: "BF16", 7: "Q8_0", 2: "Q4_0", 8: "Q5_0"}


def wanted_weights() -> str:
    """The operator's pin, LLMOS_LLAMACPP_WEIGHTS: measure (default), file or q8_0."""
    given = os.environ.get(WEIGHTS_ENV, "").strip() or "measure"
    if given not in WEIGHTS:
        raise ValueError(f"{WEIGHTS_ENV}={given[:40]!r}: give one of {', '.join(WEIGHTS)}")
    return given


def cache_dir() -> Path:
    """Where derived weights are kept: LLMOS_CACHE_DIR (the kernel sets it under its state dir for
    its own drivers), else $XDG_CACHE_HOME/llmos, else ~/.cache/llmos."""
    given = os.environ.get(CACHE_DIR_ENV)
    if given:
        return Path(given)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmos"


def file_type(model, low) -> int | None:
    """The GGUF's general.file_type as llama.cpp read it (None if the file does not say)."""
    buf = ctypes.create_string_buffer(32)
    if low.llama_model_meta_val_str(model, b"general.file_type", buf, len(buf)) < 0:
        return None
    text = buf.value.decode(errors="replace")
    return int(text) if text.isdigit() else None


def wants_copy(ftype: int | None, size: int) -> bool:
    """Whether a Q8_0 copy is worth making and measuring: the file's type has no blocked product, and the
    file is small enough that its lone stream may be bound by compute rather than by reading weights (a
    larger one would keep its file anyway, after writing and timing a copy nearly twice its size)."""
    return ftype not in BATCHED_FILE_TYPES and size <= COPY_MAX_BYTES


def q8_0_copy(gguf_path: str, directory: Path | None = None) -> Path:
    """The file's weights as Q8_0, made by llama.cpp's quantizer on first use and kept.

    The name holds a digest of the source's path, size and modification time and of llama.cpp's
    version, so a changed file or a new llama.cpp makes a new copy, never reads a stale one. A copy is
    written under a temporary name and renamed, so a driver loading beside another never reads half
    of one; at most MAX_COPIES stay (the least recently used are removed)."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    from .llamacpp_runner import quiet_logs

    quiet_logs(low)           # not the quantizer's line a tensor in the kernel's log
    directory = (directory or cache_dir()) / "gguf"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    source = Path(gguf_path).resolve()
    st = source.stat()
    key = f"{source}\0{st.st_size}\0{st.st_mtime_ns}\0{llama_cpp.__version__}".encode()
    target = directory / f"{source.stem[:80]}.{hashlib.sha256(key).hexdigest()[:16]}.q8_0.gguf"
    if target.exists():
        os.utime(target)        # used now: the last to be evicted
        return target
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    params = low.llama_model_quantize_default_params()
    params.ftype = Q8_0
    params.allow_requantize = True      # from 4-bit blocks: llama.cpp dequantizes, then quantizes anew
    try:
        code = low.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
        if code != 0:
            raise ValueError(f"llama.cpp could not make a Q8_0 copy of {source} (code {code})")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    _evict(directory, keep=target)
    return target


def _evict(directory: Path, keep: Path) -> None:
    """Past MAX_COPIES, the least recently used copies go (a driver that has one loaded keeps its
    mapping); so do partial ones a crashed driver left more than an hour ago."""
    copies = sorted(directory.glob("*.q8_0.gguf"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [p for p in copies if p != keep][MAX_COPIES - 1:]:
        old.unlink(missing_ok=True)
    for partial in directory.glob("*.partial"):
        if time.time() - partial.stat().st_mtime > PARTIAL_MAX_AGE_S:
            partial.unlink(missing_ok=True)
