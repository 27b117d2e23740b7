"""The command line every benchmark shares: model options, --quick, and a clean exit on SIGTERM."""

from __future__ import annotations

import argparse
import signal

from bench_models import DEFAULT_MODEL, SHAPES


def parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser: its docstring's first paragraph as the description and the
    rest as the epilog, the options every benchmark shares (model, device, dtype, ...) and --quick."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help=f"registry name or path of a transformers folder / .gguf file; 'tiny' builds a 2-layer "
                        f"random model (llmos.userland.testing.make_tiny_llama) in a temp dir (default: "
                        f"{DEFAULT_MODEL}, or 'tiny' with --quick)")
    p.add_argument("--device", default=None, help="cpu or cuda:N (default: cpu, or cuda:0 with --gpu)")
    p.add_argument("--gpu", action="store_true",
                   help="run on cuda:0 with a random-weight model of --shape (built in a temp dir, loaded by path)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m", help="model shape for --gpu")
    p.add_argument("--kv-cache", default=None, help="KV-cache budget, e.g. 512MiB (default: the kernel's default "
                                                    "for the device); given to the kernel and the in-process engine")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="model dtype for the kernel and every in-process method alike (default auto: what the "
                        "driver picks, bf16 on CUDA and on CPUs with native bf16, else fp32)")
    p.add_argument("--seed", type=int, default=0, help="seed for the prompts and lengths")
    p.add_argument("--quick", action="store_true", help="a small run on the tiny model (unless --model is given)")
    return p


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so kernels are stopped and temp dirs removed."""

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
