"""benchmarks/compare_ktae.py: its statistics against scipy, and its report built from run folders (no training)."""

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_ktae.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_ktae", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_t_interval_and_paired_test_match_scipy(compare):
    values = [0.41, 0.45, 0.39, 0.47, 0.44]
    interval = compare.t_interval(values)
    low, high = stats.t.interval(0.95, 4, loc=np.mean(values), scale=stats.sem(values))
    assert interval["low"] == pytest.approx(low) and interval["high"] == pytest.approx(high)
    assert interval["std"] == pytest.approx(np.std(values, ddof=1))

    treated = [0.45, 0.46, 0.44, 0.50, 0.43]
    test = compare.paired_test(values, treated)
    assert test["difference"] == pytest.approx(np.mean(np.subtract(treated, values)))
    assert test["t_test_p"] == pytest.approx(stats.ttest_rel(treated, values).pvalue)
    # exact sign-flip: the share of the 2^5 sign patterns whose |sum| reaches the observed one
    differences = np.subtract(treated, values)
    sums = [abs(np.dot(signs, differences)) for signs in itertools.product((1, -1), repeat=5)]
    assert test["sign_flip_p"] == pytest.approx(np.mean(np.array(sums) >= abs(differences.sum()) - 1e-12))
    assert (test["wins"], test["losses"], test["seeds"]) == (4, 1, 5)


def test_area_under_curve_is_the_curve_mean_height(compare):
    assert compare.area_under_curve([(0, 0.2), (10, 0.4), (20, 0.4)]) == pytest.approx(0.35)
    assert compare.area_under_curve([(5, 0.3)]) == pytest.approx(0.3)


def test_every_planned_run_has_valid_options(compare, tmp_path):
    # --report-only validates every run of the plan, then reports none (nothing trained)
    assert (
        compare.main(["--plan", "all", "--report-only", "--work", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    )
    assert json.loads((tmp_path / "out" / "compare_ktae.json").read_text())["tasks"] == {}


def _fake_run(compare, work, task, variant, seed, accuracy, hedges):
    run_dir = compare.run_dir_of(work, task, variant, seed)
    run_dir.mkdir(parents=True)
    records = [
        {"step": s, "accuracy": accuracy, "completion_length": 30 - s / 2, "completions/clipped_ratio": 0.1}
        for s in range(1, 21)
    ]
    for record in records:  # a gradient norm over the clip (1.0 by default) every other step
        record.update(learning_rate=0.03, grad_norm=2.0 if record["step"] % 2 else 0.5)
    for record in records:
        if record["step"] in (5, 10, 20):
            record["eval/accuracy"] = accuracy + record["step"] / 100
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rollouts = []
    for step, count in ((1, hedges), (16, 0)):
        for correct in (True, False):
            response = "1+2=3\n" + "~~~~\n" * (count if not correct else 0) + "\\boxed{3}"
            rollouts.append({"step": step, "response": response, "tokens": ["x", "<eos>"], "correct": correct})
    (run_dir / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rollouts))
    if "KTAE" in variant:
        key = {"step": 1, "credited": [{"token": "=", "total": 2.0}], "blamed": [{"token": "~", "total": -5.0}]}
        (run_dir / "key_tokens.jsonl").write_text(json.dumps(key) + "\n")
    (run_dir / "done.json").write_text(json.dumps({"seconds": 60.0}))


def test_report_of_finished_runs(compare, tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    for seed in range(3):
        _fake_run(compare, work, "hedge", "GRPO", seed, 0.3 + seed / 100, hedges=2)
        _fake_run(compare, work, "hedge", "GRPO+KTAE", seed, 0.35 + seed / 50, hedges=2)
    _fake_run(compare, work, "hedge", "GRPO+KTAE top=2", 0, 0.3, hedges=2)
    planned = [("hedge", v, s) for v in ("GRPO", "GRPO+KTAE", "DAPO", "GRPO+KTAE top=2") for s in range(5)]
    base = {"max_steps": 20}
    report = compare.build_report(base, planned, work, out)
    compare.write_report(report, out)
    hedge = report["tasks"]["hedge"]
    assert set(hedge["variants"]) == {"GRPO", "GRPO+KTAE", "GRPO+KTAE top=2"}  # DAPO: no finished run
    assert hedge["variants"]["GRPO"]["seeds"] == [0, 1, 2]
    final = hedge["variants"]["GRPO"]["summary"]["final_accuracy"]
    assert final["mean"] == pytest.approx(0.51) and final["n"] == 3
    test = hedge["comparisons"]["GRPO+KTAE vs GRPO"]["sampled_accuracy_mean"]
    assert test["difference"] == pytest.approx(np.mean([0.05, 0.06, 0.07])) and test["wins"] == 3
    # the SGD step: learning rate x gradient norm after clipping, 0.03 x (1.0 + 0.5) / 2 on average
    assert hedge["variants"]["GRPO"]["diagnostics"]["update_size"] == pytest.approx(0.0225)
    behaviour = hedge["variants"]["GRPO"]["behaviour"]
    assert behaviour["first"]["hedge_lines"] == pytest.approx(1.0) and behaviour["last"]["hedge_lines"] == 0
    assert behaviour["first"]["hedged_correct"] == 0 and behaviour["first"]["unhedged_correct"] == 1
    # the main comparison's KTAE runs only (3 x -5), not the sensitivity run
    assert hedge["key_tokens"]["blamed"] == [{"token": "~", "total": -15.0}] and hedge["key_tokens"]["rounds"] == 3
    markdown = (out / "compare_ktae.md").read_text()
    assert "## hedge" in markdown and "GRPO+KTAE vs GRPO (3 seeds)" in markdown and "`~` -15" in markdown
    assert (out / "compare_ktae-hedge.png").stat().st_size > 0
