"""benchmarks/gpu_check.py: it refuses clearly without CUDA, and its pieces run on a CPU (--quick)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_refuses_without_a_gpu(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "r.json")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err and not (tmp_path / "r.json").exists()
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "r.json")]) == 2
    assert "only with --quick" in capsys.readouterr().err


def test_quick_cpu_run_writes_every_part(gpu_check, tmp_path):
    out = tmp_path / "r.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["groups"] for row in report["estimator"]] == list(gpu_check.QUICK_GROUPS)
    assert all(row["max_abs_diff_vs_cpu"] == 0.0 and len(row["times_ms"]) == 5 for row in report["estimator"])
    assert report["large_group"]["rollouts"] == gpu_check.QUICK_LARGE_GROUP
    assert report["large_group"]["max_abs_diff_vs_cpu"] == 0.0
    assert report["parity"]["batches"] == gpu_check.QUICK_PARITY_BATCHES and report["parity"]["failures"] == []
    assert report["training"]["steps"] == 1 and report["training"]["policy_device"] == "cpu"
    assert report["evaluation"]["num_examples"] == {"aime24": 1}


def test_parity_batches_cover_the_awkward_kinds(gpu_check):
    batches = [gpu_check.parity_batch(seed) for seed in range(gpu_check.PARITY_BATCHES)]
    assert {ids.dtype for ids, *_ in batches} == {torch.int64, torch.int16}
    assert any(int(ids.max()) >= 2**62 for ids, *_ in batches)
    assert any(not ids.is_contiguous() for ids, *_ in batches)
    assert any(isinstance(groups, list) for *_, groups, _ in batches)
    assert {scores.dtype for _, _, scores, *_ in batches} >= {torch.float16, torch.bfloat16, torch.float32}
    assert {options["rollout_advantage"] for *_, options in batches} == {"grpo", "dr_grpo", "rloo", "none"}
    assert any(not bool(mask.any(dim=1).all()) for _, mask, *_ in batches)  # a rollout with an empty mask


def test_parity_compares_pairs_whatever_order_the_backend_lists_them_in(gpu_check):
    from ktae import compute_key_token_values

    ids, mask, scores, groups, options = gpu_check.parity_batch(0)
    by_kernels = compute_key_token_values(ids, mask, scores, groups, options, backend="cpu-kernels")
    by_sort = compute_key_token_values(ids, mask, scores, groups, options, backend="sort")
    assert not torch.equal(by_kernels.token, by_sort.token)  # the orders differ on this batch
    for name in ("group", "token", "p_value", "value"):
        in_order = [getattr(v, name)[gpu_check.pair_order(v)] for v in (by_kernels, by_sort)]
        assert torch.equal(*in_order)
