"""docs/ARCHITECTURE.md stays a true map: every repository path it names in backticks exists, and
every top-level package folder is on it; the files of its diagram exist too."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ARCHITECTURE.md"
PACKAGE_DIRS = ("kernel/", "drivers/", "services/", "userland/", "specs/")
# A backticked repository path: folders and a file name, or a folder ending in '/'; no scheme (ipc://).
PATH = re.compile(r"`((?:[A-Za-z0-9_.-]+/)+(?:[A-Za-z0-9_.-]+\.[a-z]+)?)`")


def named_paths(text: str) -> list[str]:
    return PATH.findall(text)


def missing(text: str, root: Path) -> list[str]:
    return [p for p in named_paths(text) if not (root / p).exists()]


def test_every_path_the_map_names_exists():
    text = DOC.read_text()
    assert len(named_paths(text)) > 40, "the map names too few files to be a map"
    assert missing(text, REPO) == []


def test_every_file_in_the_diagram_exists():
    diagram = DOC.read_text().split("```")[1]
    boxes = re.findall(r"\b(?:kernel|drivers|services|userland|specs)/[A-Za-z0-9_/.-]+\.(?:py|toml)", diagram)
    assert len(boxes) > 15 and [b for b in boxes if not (REPO / b).exists()] == []


def test_every_top_level_package_folder_is_on_the_map():
    named = set(named_paths(DOC.read_text()))
    assert [d for d in PACKAGE_DIRS if d not in named] == []


def test_the_infer_path_is_told_in_order():
    """The walk of one infer names its boxes from the client to the engine in the order a call meets them."""
    walk = DOC.read_text().split("## One `infer`")[1].split("## The other rooms")[0]
    stops = ["userland/client.py", "userland/connection.py", "kernel/transport.py", "kernel/dispatch.py",
             "kernel/syscalls/inference.py", "kernel/requests.py", "kernel/devices.py", "kernel/fair_share.py",
             "kernel/supervisor.py", "drivers/host.py", "drivers/engine.py", "userland/stream.py"]
    at = [walk.find(f"**`{s}`**") for s in stops]
    assert -1 not in at and at == sorted(at), dict(zip(stops, at))


def test_the_check_finds_a_path_that_is_gone(tmp_path):
    (tmp_path / "kernel").mkdir()
    (tmp_path / "kernel" / "here.py").write_text("")
    text = "`kernel/here.py` and `kernel/gone.py`, `kernel/`, not `ipc://x/y` nor `BASE:NAME`"
    assert named_paths(text) == ["kernel/here.py", "kernel/gone.py", "kernel/"]
    assert missing(text, tmp_path) == ["kernel/gone.py"]
