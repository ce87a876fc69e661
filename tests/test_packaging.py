"""What ships: the sdist holds tracked files only, and the metadata says what is tested.

The sdist is built by hatchling from a copy of the tracked files with the kind of litter a
real checkout has (the README suggests saving the server's output, admin key included, to
``.env``); none of it may reach the archive. The base install and the other Pythons are
tested by ``./dev compat`` (fresh venvs), not here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p and (ROOT / p).is_file()]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> tuple[set[str], set[str], str]:
    """(members of the sdist, tracked files, PKG-INFO) for a checkout with litter in it."""
    tracked = _tracked()
    src = tmp_path_factory.mktemp("checkout")
    for rel in tracked:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    litter = {
        ".env": "EKODB_API_KEY=eko_admin_secret\n",
        "mock_server/.env": "EKODB_API_KEY=eko_admin_secret\n",
        ".env.local": "EKODB_API_KEY=eko_admin_secret\n",
        "data/ekodb.sqlite": "not a database",
        "ekoclient/server.pem": "-----BEGIN PRIVATE KEY-----\n",
        "scratch/notes.txt": "todo",
        "ekoclient/__pycache__/x.cpython-311.pyc": "",
    }
    for rel, text in litter.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(out)],
                   cwd=src, check=True, capture_output=True)
    (archive,) = out.glob("ekoclient-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
        prefix = tar.getmembers()[0].name.split("/", 1)[0]
        member = tar.extractfile(f"{prefix}/PKG-INFO")
        assert member is not None
        pkg_info = member.read().decode()
    return names, set(tracked), pkg_info


def test_sdist_ships_only_tracked_files(sdist: tuple[set[str], set[str], str]) -> None:
    names, tracked, _ = sdist
    untracked = sorted(names - tracked - {"PKG-INFO"})
    assert untracked == [], f"the sdist ships files that are not in git: {untracked}"
    assert {"LICENSE", "pyproject.toml", "README.md", "ekoclient/__init__.py",
            "mock_server/pytest_plugin.py"} <= names


def test_metadata_declares_the_pythons_dev_tests(sdist: tuple[set[str], set[str], str]) -> None:
    """Classifiers and requires-python say exactly the versions ./dev's matrix runs."""
    _, _, pkg_info = sdist
    meta = HeaderParser().parsestr(pkg_info)
    dev = (ROOT / "dev").read_text()
    lowest = re.search(r"^LOWEST_PYTHON=(\S+)", dev, re.M)
    newer = re.search(r'^NEWER_PYTHONS="([^"]+)"', dev, re.M)
    assert lowest is not None and newer is not None
    tested = {lowest.group(1), "3.11", *newer.group(1).split()}
    classified = {c.rsplit(" :: ", 1)[1] for c in meta.get_all("Classifier", [])
                  if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert classified == tested
    assert meta["Requires-Python"] == f">={lowest.group(1)}"
    assert "License :: OSI Approved :: MIT License" in meta.get_all("Classifier", [])
