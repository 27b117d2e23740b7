"""Files a service may read: only under the folders the operator allows, never anything else.

A task runs with its caller's rights, but the service host runs as the operator: a path a
client names must not reach the operator's files. So a path is read only when, resolved (all
symlinks followed), it lies under one of `[services] read_dirs` (default: none); only regular
files are opened (no FIFO, device or /proc entry, which could hang the host or leak secrets),
each up to MAX_FILE_BYTES and all of one read up to MAX_TOTAL_BYTES. The host cannot write the
kernel's audit log, so every file read is logged here (structlog event "services.file_read").
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import structlog

from .hookspecs import ServiceError

MAX_FILE_BYTES = 8 << 20
MAX_TOTAL_BYTES = 64 << 20
MAX_FILES = 10_000
SETTING = "[services] read_dirs"

log = structlog.get_logger("llmos.services")


@dataclass
class Document:
    source: str        # the name it is filed under: the file's name, or its path under the folder given
    text: str


class AllowedFiles:
    """Reads text files under the operator's allowed folders, for one caller."""

    def __init__(self, read_dirs: list[str], caller: dict | None = None, on_read=None):
        self.roots = [Path(d).resolve() for d in read_dirs]
        self.caller = caller or {}
        self.on_read = on_read or (lambda path, nbytes: None)   # tells the kernel, for its audit log

    def _allowed(self, path: Path) -> bool:
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def _resolve(self, path: str, task: str) -> Path:
        if not self.roots:
            raise ServiceError("EACCES", f"{task}: this kernel lets services read no files ({SETTING} is empty); "
                                         f"send the text instead, or ask the operator to allow a folder")
        try:
            real = Path(os.path.expanduser(path)).resolve(strict=True)
        except (OSError, RuntimeError):
            real = None
        if real is None or not self._allowed(real):     # the same answer: say nothing of what exists outside
            raise ServiceError("EACCES", f"{task}: '{path[:200]}' is not in a folder services may read "
                                         f"({SETTING}: {', '.join(map(str, self.roots))})")
        return real

    def collect(self, path: str, suffixes: set[str], task: str) -> tuple[list[Document], list[dict]]:
        """The text documents at a path (a file, or the files under a folder), and what was skipped and why."""
        root = self._resolve(path, task)
        mode = os.stat(root).st_mode
        if stat.S_ISREG(mode):
            candidates = [(root, root.name)]
        elif stat.S_ISDIR(mode):
            candidates = self._walk(root)
        else:
            raise ServiceError("EINVAL", f"{task}: '{path[:200]}' is neither a regular file nor a folder")
        docs, skipped, total = [], [], 0
        for file, source in candidates:
            if Path(source).suffix.lower() not in suffixes:
                skipped.append({"source": source, "why": f"not a text document ({', '.join(sorted(suffixes))})"})
                continue
            try:
                data = self._read(file, source, MAX_TOTAL_BYTES - total)
            except ServiceError as exc:
                skipped.append({"source": source, "why": exc.message})
                continue
            total += len(data)
            try:
                docs.append(Document(source, data.decode("utf-8")))
            except UnicodeDecodeError:
                skipped.append({"source": source, "why": "not UTF-8 text"})
        return docs, skipped

    def _walk(self, root: Path) -> list[tuple[Path, str]]:
        out = []
        for folder, dirs, names in os.walk(root):     # does not descend into symlinked folders
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if not name.startswith("."):
                    file = Path(folder) / name
                    out.append((file, file.relative_to(root).as_posix()))
                    if len(out) >= MAX_FILES:
                        return out
        return out

    def _read(self, file: Path, source: str, budget: int) -> bytes:
        """One file, checked again after resolving: under an allowed folder, regular, within the limits."""
        real = file.resolve()
        if not self._allowed(real):
            raise ServiceError("EACCES", f"links outside the folders services may read ({SETTING})")
        if not stat.S_ISREG(os.stat(real).st_mode):
            raise ServiceError("EINVAL", "not a regular file")
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)          # what was opened, in case the path changed since the checks
            if not stat.S_ISREG(st.st_mode):
                raise ServiceError("EINVAL", "not a regular file")
            limit = min(MAX_FILE_BYTES, budget)
            if st.st_size > limit:
                raise ServiceError("EINVAL", f"larger than {MAX_FILE_BYTES >> 20} MiB per file or "
                                             f"{MAX_TOTAL_BYTES >> 20} MiB per read")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(limit + 1)
        finally:
            os.close(fd)
        if len(data) > limit:
            raise ServiceError("EINVAL", f"grew past {limit} bytes while being read")
        log.info("services.file_read", path=str(real), bytes=len(data), principal=self.caller.get("principal"),
                 pid=self.caller.get("pid"), program=self.caller.get("name"))
        self.on_read(str(real), len(data))
        return data
