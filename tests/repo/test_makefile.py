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


def test_make_demo_stops_when_the_scenario_does_not_exist(tmp_path: Path) -> None:
    # Before: the failed $(...) inside eval was ignored and `dvc exp run` ran the default params (with Kaggle
    # credentials, the real multi-hour study). A stand-in dvc records whether it was called at all.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    called = tmp_path / "dvc-called"
    (bin_dir / "dvc").write_text(f'#!/bin/sh\necho "$@" >> {called}\n')
    (bin_dir / "dvc").chmod(0o755)
    (tmp_path / "installed.stamp").touch()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    make = ["make", "-f", str(REPO / "Makefile"), "demo", "STAMP=installed.stamp"]
    result = subprocess.run([*make, "SCENARIO=tinny"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "no scenario 'tinny'" in result.stderr
    assert not called.exists()
    for empty in ("SCENARIO=", "SCENARIO= "):  # no name is no scenario, not the tools' default
        result = subprocess.run([*make, empty], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode != 0
        assert "no scenario ''" in result.stderr or "no scenario ' '" in result.stderr
        assert not called.exists()
    # A name is one word from the environment: an option, a space or a shell command stays a (wrong) name.
    for odd in ("--help", "-h", "tiny ", "tiny\t", "tiny extra", f"tiny;touch {tmp_path / 'ran'}"):
        result = subprocess.run([*make, f"SCENARIO={odd}"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode != 0 and f"no scenario {odd!r}" in result.stderr, (odd, result.stderr)
        assert not called.exists() and not (tmp_path / "ran").exists()
    # The control: a scenario that exists reaches dvc, with its flags.
    result = subprocess.run([*make, "SCENARIO=tiny"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert called.read_text().startswith("exp run --temp --name tiny-") and "-S image.side=32" in called.read_text()
