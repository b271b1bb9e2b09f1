"""The repository stands alone: no tracked file points at material outside it."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Spelled in pieces so that this file does not match itself.
OUTSIDE = [p.encode() for p in ("../" + "shared", "shared" + "/data", "shared" + "/spec", "/work" + "/shared")]


def tracked_files() -> list[Path]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=False)
    if listed.returncode != 0:
        pytest.skip("not a git checkout (an unpacked sdist or wheel)")
    return [REPO_ROOT / name for name in listed.stdout.decode().split("\0") if name]


def test_no_tracked_file_refers_outside_the_repository():
    files = tracked_files()
    assert any(f.name == "spec.md" for f in files)  # the listing is the repository's
    found = [
        f"{path.relative_to(REPO_ROOT)}: {pattern.decode()}"
        for path in files
        if path.is_file()
        for pattern in OUTSIDE
        if pattern in path.read_bytes()
    ]
    assert found == []
