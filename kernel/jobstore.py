"""A fine-tune job's files, and the adapter it leaves: everything kernel/jobs.py keeps on disk.

    STATE_DIR/jobs/<id>/job.json          owner, base, name, hyper, data_sha256, state, step, loss, ...
    STATE_DIR/jobs/<id>/data.jsonl        its examples, as submitted
    STATE_DIR/jobs/<id>/checkpoint-<N>/   the adapter and optimizer state after step N (the latest only)

Every write lands whole: a file is written beside its place and renamed over it, and a new
checkpoint is a new folder that job.json names only once it is complete, so a kernel killed at
any moment boots on a job it can resume from its last checkpoint. The adapter a finished job
writes (kernel/adapters/store.py's layout) is built under STATE_DIR/tmp/ and renamed into place.
These functions block on the disk: the kernel calls them through asyncio.to_thread.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path

from .adapters.store import META_FILE, PEFT_FILES, adapter_dir

JOBS_DIR = "jobs"
JOB_FILE = "job.json"
DATA_FILE = "data.jsonl"
CHECKPOINT_FILES = ("adapter_model.safetensors", "optimizer.pt")


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class JobStore:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.root = state_dir / JOBS_DIR

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def records(self) -> list[dict]:
        """Every job's job.json, oldest first; a folder without a readable one (cut short at its
        creation) is removed."""
        out = []
        for folder in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            try:
                out.append(json.loads((folder / JOB_FILE).read_text()))
            except (OSError, ValueError):
                shutil.rmtree(folder, ignore_errors=True)
        return sorted(out, key=lambda r: r.get("created", 0))

    def create(self, record: dict, data: bytes) -> None:
        """A new job's folder: its data first, job.json last (a folder without it is not a job)."""
        folder = self.folder(record["job"])
        folder.mkdir(parents=True, mode=0o700)
        write_atomic(folder / DATA_FILE, data)
        self.save(record)

    def save(self, record: dict) -> None:
        write_atomic(self.folder(record["job"]) / JOB_FILE, json.dumps(record).encode())

    def data(self, job_id: str) -> list[dict]:
        text = (self.folder(job_id) / DATA_FILE).read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def write_checkpoint(self, record: dict, step: int, files: dict[str, bytes]) -> None:
        """Keep step's checkpoint, name it in job.json, then drop the one before."""
        folder = self.folder(record["job"])
        target = folder / f"checkpoint-{step}"
        shutil.rmtree(target, ignore_errors=True)    # from a run that died before naming it
        target.mkdir(mode=0o700)
        for name in CHECKPOINT_FILES:
            write_atomic(target / name, files[name])
        before = record.get("checkpoint_step", 0)
        record["checkpoint_step"] = step
        self.save(record)
        if before and before != step:
            shutil.rmtree(folder / f"checkpoint-{before}", ignore_errors=True)

    def checkpoint(self, record: dict) -> dict[str, bytes] | None:
        step = record.get("checkpoint_step", 0)
        if not step:
            return None
        folder = self.folder(record["job"]) / f"checkpoint-{step}"
        return {name: (folder / name).read_bytes() for name in CHECKPOINT_FILES}

    def drop_checkpoints(self, job_id: str) -> None:
        """A job that ended needs none."""
        for folder in self.folder(job_id).glob("checkpoint-*"):
            shutil.rmtree(folder, ignore_errors=True)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def write_adapter(self, record: dict, files: dict[str, bytes]) -> dict:
        """The finished adapter, whole, at STATE_DIR/adapters/<owner>/<base>/<name>/: version 1, or the
        one it replaces + 1 (keeping whether that one was shared). Returns its llmos.json."""
        missing = [f for f in PEFT_FILES if f not in files]
        if missing:
            raise ValueError(f"the driver sent no {', '.join(missing)}")
        dest = adapter_dir(self.state_dir, record["owner"], record["base"], record["name"])
        old = {}
        try:
            old = json.loads((dest / META_FILE).read_text())
        except (OSError, ValueError):
            pass
        meta = {"base": record["base"], "name": record["name"], "principal": record["owner"],
                "version": int(old.get("version", 0)) + 1, "created": time.time(),
                "data_sha256": record["data_sha256"], "hyperparameters": record["hyper"], "eval": {},
                "shared": bool(old.get("shared", False)), "job": record["job"], "loss": record.get("loss"),
                "steps": record["steps"]}
        tmp_root = self.state_dir / "tmp"
        tmp_root.mkdir(mode=0o700, exist_ok=True)
        staged = tmp_root / f"adapter-{record['job']}-{secrets.token_hex(4)}"
        staged.mkdir(mode=0o700)
        for name in PEFT_FILES:
            write_atomic(staged / name, files[name])
        write_atomic(staged / META_FILE, json.dumps(meta, indent=1).encode())
        dest.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        retired = None
        if dest.exists():      # a directory cannot be renamed over a full one: move the old one out first
            retired = tmp_root / f"retired-{record['job']}-{secrets.token_hex(4)}"
            os.replace(dest, retired)
        os.replace(staged, dest)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
        return meta
