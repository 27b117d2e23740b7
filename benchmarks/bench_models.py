"""Which model a benchmark runs, made or found, and loaded the way the driver loads it."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_MODEL = "smollm2-135m-instruct"
SHAPES = {  # SmolLM2's dimensions, for random-weight models on a GPU
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536),
    "smollm2-1.7b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                         intermediate_size=8192),
}
VOCAB = 49152


@contextlib.contextmanager
def model_source(args):
    """The model to benchmark as (name the kernel loads, device); temp folders are removed after.

    Also settles args.dtype ("auto" becomes what the driver would pick), so that the kernel and
    the in-process methods run the same dtype.
    """
    tmp = Path(tempfile.mkdtemp(prefix="llmos-bench-model-"))
    try:
        device = args.device or ("cuda:0" if args.gpu else "cpu")
        if getattr(args, "dtype", "auto") == "auto":
            from llmos.drivers.loader import auto_dtype
            args.dtype = auto_dtype(device)
        if args.gpu:
            name = make_shaped_llama(tmp / args.shape, args.shape)
        elif (args.model or ("tiny" if getattr(args, "quick", False) else DEFAULT_MODEL)) == "tiny":
            from llmos.userland.testing import make_tiny_llama
            name = make_tiny_llama(tmp / "tiny-llama")
        else:
            name = args.model or DEFAULT_MODEL
        yield name, device
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(name: str, device: str, dtype: str):
    """The model loaded the way the driver loads it (drivers/loader.py)."""
    from llmos.drivers.loader import load
    from llmos.kernel import registry
    return load(registry.resolve(name), device, dtype)


def gguf_path(name: str) -> str:
    """The GGUF file of a registry model, for the scripts that hand it to llama.cpp."""
    from llmos.kernel import registry
    spec = registry.resolve(name)
    if not spec.gguf_file:
        raise SystemExit(f"{spec.name} is not a GGUF model; llama.cpp needs one")
    return os.path.join(spec.path, spec.gguf_file)


def load_tokenizer(name: str):
    """Just the tokenizer of a model, read as drivers/loader.py reads it (faster than loading the weights)."""
    from transformers import AutoTokenizer

    from llmos.kernel import registry
    spec = registry.resolve(name)
    files = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    return AutoTokenizer.from_pretrained(spec.path, local_files_only=True, **files)


def make_shaped_llama(path: Path, shape: str) -> str:
    """A random-weight LlamaForCausalLM with SmolLM2's dimensions and a 49152-token tokenizer, saved as a folder.

    The tokenizer has no merges: text encodes to one token per byte, and every id decodes to a short
    ASCII word, so random models stream visible text every step.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(specials + sorted(alphabet))}
    letters = "abcdefghijklmnopqrstuvwxyz"
    for n in itertools.count(2):
        for word in map("".join, itertools.product(letters, repeat=n)):
            for token in ("\u0120" + word, word):   # \u0120 is the byte-level space
                if len(vocab) < VOCAB:
                    vocab[token] = len(vocab)
        if len(vocab) >= VOCAB:
            break
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|endoftext|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=8192, tie_word_embeddings=True,
                         rope_theta=100000.0, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         **SHAPES[shape])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
