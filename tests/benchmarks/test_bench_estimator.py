"""benchmarks/bench_estimator.py: the released-style reference agrees with KTAE, and the table shows it."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_estimator.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_estimator", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_matches_ktae_on_small_batches(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    argv = ["--groups", "2,3", "--group-size", "4", "--max-len", "16", "--repeats", "1", "--reference-max-groups", "2"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    small, large = json.loads(out.read_text())["rows"]
    assert small["groups"] == 2 and small["max_abs_diff_vs_reference"] < 1e-5
    assert "reference_s" not in large  # above --reference-max-groups
    output = capsys.readouterr().out
    assert "| speed-up | max diff |" in output and output.rstrip().endswith("| - | - | - |")


def test_the_reference_is_the_specs_worked_example(bench):
    """docs/spec.md's worked example (one group, scores 1, 1, 0, 0): the spec's advantages."""
    import torch

    rows = [[5, 7, 7, 9], [5, 8, 9], [6, 7, 9, 9], [6, 8]]
    responses = torch.tensor([r + [0] * (4 - len(r)) for r in rows])
    mask = torch.tensor([[i < len(r) for i in range(4)] for r in rows])
    advantages = bench.released_style_reference(responses, mask, torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.zeros(4), 16)
    expected = [0.866024 + v for v in (1.0, 0.0, 0.0, 0.029751)]
    assert advantages[0].tolist() == pytest.approx(expected, abs=1e-5)
