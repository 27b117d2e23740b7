"""The adapters on disk: their names, their layout, and who may use which.

The layout on disk is the contract between fine-tune jobs (which write adapters) and inference
(which serves them). Each adapter is a folder in PEFT's format (`adapter_config.json`,
`adapter_model.safetensors`) plus `llmos.json`, its metadata:
{base, name, principal, version, created, data_sha256, hyperparameters, eval, shared}.

    STATE_DIR/adapters/<principal>/<base>/<name>/

A folder appears whole (written elsewhere in the state dir, then renamed into place), so a reader
never sees half an adapter. Bases are registry or config names (never paths), so every part of the
path is a plain name checked by NAME.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import einval

ADAPTERS_DIR = "adapters"
META_FILE = "llmos.json"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")    # an adapter's name, and a base's as a path part
SEPARATOR = ":"


class AdapterNameError(ValueError):
    """Not a `BASE:NAME` an adapter can have; the message says why."""


def split_name(model: str) -> tuple[str, str] | None:
    """(base, adapter) for `BASE:NAME`; None for a plain model name (no separator)."""
    if SEPARATOR not in model:
        return None
    base, _, name = model.rpartition(SEPARATOR)
    for part, what in ((base, "base model"), (name, "adapter")):
        if not NAME.fullmatch(part) or part in (".", ".."):
            raise AdapterNameError(f"'{model[:200]}': the {what} name must be 1-64 of A-Z a-z 0-9 . _ - "
                                   f"starting with a letter or digit")
    return base, name


def adapter_parts(name: str) -> tuple[str, str] | None:
    """(base, adapter) of a `BASE:NAME` a caller sent; None for a plain model name or a path (a path may
    hold ':'); EINVAL for a `BASE:NAME` no adapter can have."""
    if "/" in name or "\\" in name:
        return None
    try:
        return split_name(name)
    except AdapterNameError as exc:
        raise einval(str(exc)) from None


def adapter_dir(state_dir: Path, principal: str, base: str, name: str) -> Path:
    """Where principal's adapter `base:name` lives (whether or not it exists)."""
    for part in (principal, base, name):
        if not NAME.fullmatch(part) or part in (".", ".."):
            raise AdapterNameError(f"'{part[:200]}' cannot name a folder of an adapter")
    return state_dir / ADAPTERS_DIR / principal / base / name


MAX_ADAPTER_BYTES = 256 << 20     # PEFT's files of one adapter, read into the kernel and sent to a driver
MAX_META_BYTES = 1 << 20


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter on disk that a caller may use: whose it is and where."""
    owner: str
    base: str
    name: str
    path: Path
    meta: dict

    @property
    def id(self) -> str:
        """Its name on the driver channel: unique across owners (Submit.adapter)."""
        return f"{self.owner}/{self.base}{SEPARATOR}{self.name}"

    @property
    def shared(self) -> bool:
        return self.meta.get("shared") is True

    def describe(self) -> dict:
        m = self.meta
        return {"model": f"{self.base}{SEPARATOR}{self.name}", "base": self.base, "name": self.name,
                "owner": self.owner, "shared": self.shared, "version": m.get("version"), "created": m.get("created"),
                "eval": m.get("eval")}


class AdapterStore:
    """The adapters in the state dir, as each principal may see them: its own, and those shared.

    Another principal's unshared adapter is answered exactly as one that does not exist (ENOENT),
    so nobody learns what others have trained. Methods read the disk: call them on a thread.
    """

    def __init__(self, state_dir: Path):
        self.root = state_dir / ADAPTERS_DIR

    def find(self, principal: str, base: str, name: str) -> AdapterInfo:
        """The adapter `base:name` that `principal` may use: its own first, else a shared one."""
        own = self._info(principal, base, name)
        if own is not None:
            return own
        for owner in self._owners():
            if owner != principal:
                info = self._info_or_none(owner, base, name)
                if info is not None and info.shared:
                    return info
        raise AdapterNotFound(f"no adapter '{base}{SEPARATOR}{name}' that you may use; `adapters` lists yours "
                              f"and those shared with you")

    def usable(self, principal: str) -> list[AdapterInfo]:
        """Every adapter `principal` may use, its own first."""
        out = []
        for owner in [principal] + [o for o in self._owners() if o != principal]:
            for folder in sorted(self.root.glob(f"{owner}/*/*")):
                info = self._info_or_none(owner, folder.parent.name, folder.name)
                if info is not None and (owner == principal or info.shared):
                    out.append(info)
        return out

    def set_shared(self, principal: str, base: str, name: str, shared: bool) -> AdapterInfo:
        """Share (or stop sharing) the principal's own adapter: its llmos.json, replaced whole."""
        info = self._info(principal, base, name)
        if info is None:
            raise AdapterNotFound(f"you have no adapter '{base}{SEPARATOR}{name}' (only its owner may share it)")
        meta = {**info.meta, "shared": shared}
        tmp = info.path / f".{META_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, info.path / META_FILE)
        return AdapterInfo(info.owner, base, name, info.path, meta)

    def read_files(self, info: AdapterInfo) -> dict[str, bytes]:
        """PEFT's files of the adapter, as a driver gets them; BadAdapter if missing, odd or too large."""
        files, total = {}, 0
        for fname in PEFT_FILES:
            try:
                with open(info.path / fname, "rb", opener=_no_follow) as f:
                    size = os.fstat(f.fileno()).st_size
                    total += size
                    if total > MAX_ADAPTER_BYTES:
                        raise BadAdapter(f"adapter '{info.base}{SEPARATOR}{info.name}' is over "
                                         f"{MAX_ADAPTER_BYTES >> 20} MiB; a LoRA adapter is far smaller")
                    files[fname] = f.read(size + 1)
            except FileNotFoundError:
                raise BadAdapter(f"adapter '{info.base}{SEPARATOR}{info.name}' is incomplete: {fname} is missing") from None
            except OSError as exc:
                raise BadAdapter(f"adapter '{info.base}{SEPARATOR}{info.name}': {fname} cannot be read "
                                 f"({exc.strerror})") from None
        return files

    def _owners(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME.fullmatch(p.name))
        except OSError:
            return []

    def _info_or_none(self, owner: str, base: str, name: str) -> AdapterInfo | None:
        """As _info, but a broken adapter is as none (what another principal's must look like)."""
        try:
            return self._info(owner, base, name)
        except BadAdapter:
            return None

    def _info(self, owner: str, base: str, name: str) -> AdapterInfo | None:
        """The adapter's metadata; None if there is no such adapter. BadAdapter if its metadata
        is unreadable or names another base than its folder."""
        try:
            path = adapter_dir(self.root.parent, owner, base, name)
        except AdapterNameError:
            return None
        try:
            with open(path / META_FILE, "rb", opener=_no_follow) as f:
                raw = f.read(MAX_META_BYTES + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise BadAdapter(f"adapter '{base}{SEPARATOR}{name}': {META_FILE} cannot be read ({exc.strerror})") from None
        try:
            meta = json.loads(raw) if len(raw) <= MAX_META_BYTES else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta = None
        if not isinstance(meta, dict):
            raise BadAdapter(f"adapter '{base}{SEPARATOR}{name}': {META_FILE} is not a JSON map of at most 1 MiB")
        if meta.get("base") != base:
            raise BadAdapter(f"adapter '{base}{SEPARATOR}{name}' was trained on '{str(meta.get('base'))[:200]}', "
                             f"not on '{base}'")
        return AdapterInfo(owner, base, name, path, meta)


class AdapterNotFound(LookupError):
    """No adapter of that name the caller may use (another principal's unshared one included)."""


class BadAdapter(ValueError):
    """An adapter whose files cannot be served: missing, unreadable, too large, or of another base."""


def _no_follow(path, flags):
    return os.open(path, flags | os.O_NOFOLLOW)
