"""The core install: torch and numpy alone import and run the estimator (issue 23).

A fresh virtual environment gets the installed torch and numpy (the same versions, so that no other
torch build is resolved) and ktae from a copy of this tree with ``--no-deps``: no numba (the ``fast``
extra), no matplotlib (the ``reports`` extra), nor any other dependency. There the estimator must give
the full install's advantages, count by sorting under ``backend="auto"``, and say which extra to install
when asked for the numba kernels.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ktae import compute_key_token_values, compute_ktae_advantages
from tests.core.reference import random_batch

REPO_ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import importlib.util, json, sys, time
start = time.perf_counter()
import ktae
ktae.compute_ktae_advantages
import_seconds = time.perf_counter() - start
import torch

batch = json.load(open(sys.argv[1]))
responses, mask = torch.tensor(batch["responses"]), torch.tensor(batch["mask"])
scores, groups = torch.tensor(batch["scores"], dtype=torch.float64), batch["groups"]
advantages = ktae.compute_ktae_advantages(responses, mask, scores, groups)
values = ktae.compute_key_token_values(responses, mask, scores, groups)
try:
    ktae.compute_ktae_advantages(responses, mask, scores, groups, backend="cpu-kernels")
    kernels_error = None
except RuntimeError as error:
    kernels_error = str(error)
print(json.dumps({
    "ktae_file": ktae.__file__,
    "import_seconds": import_seconds,
    "absent": [name for name in ("numba", "matplotlib", "yaml", "tqdm", "math_verify", "scipy")
               if importlib.util.find_spec(name) is None],
    "modules": sorted({name.split(".")[0] for name in sys.modules}),
    "advantages": advantages.tolist(),
    "values": values.value.tolist(),
    "kernels_error": kernels_error,
}))
"""


def _run(command: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ensurepip") is None, reason="this Python cannot create a venv with pip")
@pytest.mark.skipif(
    torch.version.cuda is not None or torch.version.hip is not None,
    reason="installs this torch build in a venv: the CPU build (README, Set-up) only, not a GPU-sized one",
)
def test_the_estimator_runs_with_torch_and_numpy_alone(tmp_path):
    venv, tree = tmp_path / "venv", tmp_path / "ktae"
    # The package's files only: no build folders, no caches of this checkout.
    shutil.copytree(REPO_ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, tree / name)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env |= {"PYTHONNOUSERSITE": "1", "PIP_NO_INPUT": "1"}
    python = venv / "bin" / "python"
    try:
        _run([sys.executable, "-m", "venv", venv], tmp_path, env)
        # The versions installed here, pinned: an unpinned torch could resolve to a multi-GB CUDA build.
        _run(
            [python, "-m", "pip", "install", "-q", f"torch=={torch.__version__}", f"numpy=={np.__version__}"],
            tmp_path,
            env,
        )
        _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", tree], tmp_path, env)

        responses, mask, scores, groups = random_batch(8, num_groups=10, max_group=12, max_len=30, vocab=80)
        groups = groups.tolist()  # numbered in order of appearance, there as here
        batch = {"responses": responses.tolist(), "mask": mask.tolist(), "scores": scores.tolist(), "groups": groups}
        (tmp_path / "batch.json").write_text(json.dumps(batch))
        result = json.loads(_run([python, "-c", CHILD, tmp_path / "batch.json"], tmp_path, env).stdout)
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # about 1 GB, mostly torch

    assert Path(result["ktae_file"]).is_relative_to(venv)  # the installed copy, not this checkout
    assert result["absent"] == ["numba", "matplotlib", "yaml", "tqdm", "math_verify", "scipy"]
    assert not {"numba", "matplotlib", "yaml", "tqdm", "math_verify", "scipy"} & set(result["modules"])
    # "auto" counted by sorting there: the sort backend's result here, bit for bit, and the kernels' to 1e-6.
    sort = compute_ktae_advantages(responses, mask, scores, groups, backend="sort")
    torch.testing.assert_close(torch.tensor(result["advantages"], dtype=torch.float32), sort, atol=0, rtol=0)
    kernels = compute_ktae_advantages(responses, mask, scores, groups, backend="cpu-kernels")
    torch.testing.assert_close(torch.tensor(result["advantages"], dtype=torch.float32), kernels, atol=1e-6, rtol=0)
    values = compute_key_token_values(responses, mask, scores, groups, backend="sort").value
    torch.testing.assert_close(torch.tensor(result["values"], dtype=torch.float64), values, atol=0, rtol=0)
    assert "numba is not installed" in result["kernels_error"] and "pip install 'ktae[fast]'" in result["kernels_error"]
    print(f"import ktae + the estimator in the core venv: {result['import_seconds']:.2f} s")
