"""`python -m llmos.kernel [flags]`: boot the kernel (what `llmos boot` runs)."""

from __future__ import annotations

import argparse
import sys

from .boot import boot
from .config import ConfigError, load


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmos boot", description="Boot the llmos kernel and serve syscalls until SIGINT/SIGTERM.")
    p.add_argument("--socket", help="ZeroMQ URL to bind (default: $LLMOS_SOCKET or ipc://$XDG_RUNTIME_DIR/llmos/kernel.sock)")
    p.add_argument("--device", help="cpu, cuda:N, auto, or a comma-separated list (default: auto)")
    p.add_argument("--model", help="default model, loaded at boot (default: smollm2-135m-instruct)")
    p.add_argument("--no-model", action="store_true", help="load no model at boot")
    p.add_argument("--replicas", type=int, help="copies of the boot model, one per device (default 1); "
                   "new requests go to the copy that can start them soonest")
    p.add_argument("--state-dir", help="where memory and logs persist (default: ~/.local/state/llmos)")
    p.add_argument("--config", help="TOML config file (default: $LLMOS_CONFIG or ~/.config/llmos/config.toml)")
    p.add_argument("--kv-cache", help="KV-cache budget per generate model, e.g. 512MiB")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   help="model dtype (default auto: bf16 on CUDA and on CPUs with native bf16, else fp32)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve /metrics, /health/live and /health/ready here "
                   "(unauthenticated, read-only: keep it on loopback or firewalled)")
    p.add_argument("--ray", metavar="ADDRESS", help="also run drivers as actors on this Ray cluster (as ray.init takes "
                   "it: auto, HOST:PORT, ray://HOST:PORT), one per GPU or per node without GPUs; needs llmos[ray]")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load({"socket": args.socket, "device": args.device, "model": args.model, "no_model": args.no_model,
                         "state_dir": args.state_dir, "config": args.config, "kv_cache": args.kv_cache, "dtype": args.dtype,
                         "log_level": args.log_level, "metrics": args.metrics,
                         "replicas": args.replicas, "ray": args.ray})
    except ConfigError as exc:
        print(f"llmos boot: {exc}", file=sys.stderr)
        return 2
    return boot(settings)


if __name__ == "__main__":
    sys.exit(main())
