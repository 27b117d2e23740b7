"""CurveZMQ key files: written by the kernel for each principal, read by clients in any language.

The format is ZeroMQ's certificate format (zmq.auth.load_certificate and czmq read it): a
`curve` section with `public-key` and, in a principal's secret file, `secret-key`, all Z85. A
principal's file also carries, in its `metadata` section, the kernel's public key and the
address to reach it, so a client handed one file can connect with nothing else. Secret files
are created 0600 inside a 0700 folder, by the umask at creation, never chmod-ed afterwards.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

KERNEL_KEY_META = "kernel-public-key"
SOCKET_META = "socket"
_LINE = re.compile(r'^\s*([A-Za-z0-9_-]+)\s*=\s*"?([^"]*)"?\s*$')


@contextmanager
def private_umask():
    """Files and folders made inside are readable by their owner alone."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def private_dir(path: Path) -> Path:
    """A 0700 folder (made so if it is new)."""
    with private_umask():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def write_key_file(path: Path, public_key: str, secret_key: str | None = None,
                   metadata: dict[str, str] | None = None) -> Path:
    """Write a certificate file atomically: a new file 0600 (secret) or 0644 (public only), then rename."""
    lines = ["#   llmos CurveZMQ certificate", "#   " + ("SECRET: give it to its principal alone." if secret_key
                                                         else "public key: safe to share."), "", "metadata"]
    lines += [f'    {k} = "{v}"' for k, v in (metadata or {}).items()]
    lines += ["curve", f'    public-key = "{public_key}"']
    if secret_key:
        lines.append(f'    secret-key = "{secret_key}"')
    tmp = path.with_name(path.name + ".tmp")
    mode = 0o600 if secret_key else 0o644
    with private_umask():
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def read_key_file(path: str | os.PathLike) -> dict[str, str]:
    """Every `name = "value"` of a certificate file: public-key, secret-key and the metadata."""
    out: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    if "public-key" not in out:
        raise ValueError(f"{path} is not a CurveZMQ certificate (no public-key)")
    return out
