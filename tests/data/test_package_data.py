"""A built (non-editable) wheel carries the benchmark suites, and an install of it loads them."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SIZES = {"aime24": 30, "amc23": 83, "math500": 500, "minerva": 272, "olympiadbench": 675}
SUITES = "ktae/data/math_eval/"


def test_wheel_carries_the_suites_and_loads_them_when_installed(tmp_path):
    # Build from a copy, so the checkout gets no build/ or egg-info folder.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("ktae-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {SUITES + f for f in ("README.md", "reference_scores.json")} <= names
        for suite, size in SIZES.items():
            lines = archive.read(f"{SUITES}{suite}.jsonl").decode("utf-8").splitlines()
            assert len(lines) == size
            assert all(set(json.loads(line)) == {"problem", "answer"} for line in lines)
        assert len(json.loads(archive.read(SUITES + "reference_scores.json"))["rows"]) == 8
        archive.extractall(tmp_path / "site")  # a pure-Python wheel installs by unpacking

    check = (
        "import ktae; from ktae.data import load_benchmark; from ktae.data.benchmarks import reference_scores; "
        "print(ktae.__file__, len(load_benchmark('aime24')), len(reference_scores()))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    ran = subprocess.run(
        [sys.executable, "-c", check], check=False, capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    location, problems, rows = ran.stdout.split()
    assert Path(location).is_relative_to(tmp_path / "site")
    assert (int(problems), int(rows)) == (30, 8)
