"""What a wheel (and so the container image) carries: every package folder of the five layers.

pyproject.toml lists the packages by name (the folders are mapped onto `llmos.*`); an editable install
finds a new subpackage anyway, a built wheel does not, so a folder left out of the list works in every
test and breaks the image. This holds the list to the folders."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_the_wheel_and_nothing_else():
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = set()
    for package, folder in setup["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            folders.add(".".join([package, *parts]))
    assert set(setup["packages"]) == folders
