"""`pip install .` gives the `h11-server` command; its build leftovers are ignored by git."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_build_leftovers_are_ignored_by_git() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["build/lib/protocol/__init__.py", "h11_server.egg-info/PKG-INFO"]
    result = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.split() == paths, result


def test_the_package_metadata_declares_the_h11_server_command(tmp_path: Path) -> None:
    """What `pip install .` installs: the metadata setuptools writes, from a copy of the sources
    (a build writes build/ and *.egg-info beside them), names `h11-server` and our packages."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    for package in ("protocol", "handlers", "transports"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from setuptools import setup; setup()",
            "-q",
            "egg_info",
            "--egg-base",
            str(tmp_path),
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0 and "No module named 'setuptools'" in result.stderr:
        pytest.skip("setuptools is not installed")
    assert result.returncode == 0, result.stderr
    metadata = tmp_path / "h11_server.egg-info"
    assert "h11-server = transports.cli:main" in (metadata / "entry_points.txt").read_text()
    assert (metadata / "top_level.txt").read_text().split() == ["handlers", "protocol", "transports"]
    from transports.cli import main

    assert callable(main)
