"""make setup: reruns when requirements.txt's content changes, not when a clone renews its mtime; pip pinned."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO


def _up_to_date(folder: Path) -> bool:
    """``make -q setup``: exit 0 when there is nothing to do."""
    return subprocess.run(["make", "-q", "setup"], cwd=folder, capture_output=True).returncode == 0


def test_setup_follows_the_content_of_requirements_not_its_mtime(tmp_path: Path) -> None:
    for name in ("Makefile", "requirements.txt"):
        shutil.copy(REPO / name, tmp_path / name)
    checksum = subprocess.run(["cksum", "requirements.txt"], cwd=tmp_path, capture_output=True, text=True)
    (tmp_path / ".venv/bin").mkdir(parents=True)
    (tmp_path / f".venv/.installed-{checksum.stdout.split()[0]}").touch()
    assert _up_to_date(tmp_path)
    later = (tmp_path / ".venv").stat().st_mtime + 3600
    os.utime(tmp_path / "requirements.txt", (later, later))  # as a fresh clone's checkout renews it
    assert _up_to_date(tmp_path)
    with open(tmp_path / "requirements.txt", "a") as requirements:
        requirements.write("six==1.16.0\n")
    assert not _up_to_date(tmp_path)


def test_setup_pins_pip_too() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^PIP := pip==\d+(\.\d+)+$", makefile, re.M)
    assert "--upgrade pip" not in makefile
