import pickle
import subprocess
import sys

import numpy as np
import pytest

from ktae.rewards import accuracy_reward, compute_score, dapo_reward, make_overlong_penalty


def test_accuracy_and_dapo_rewards_on_str_and_chat_completions():
    completions = [
        "so \\boxed{\\frac{1}{2}}",
        [{"role": "assistant", "content": "it is \\boxed{0.5}"}],
        "I think 0.5",  # no boxed answer
        "\\boxed{3}",
    ]
    answers = ["0.5", "\\frac12", "0.5", ["1", "2"]]
    assert accuracy_reward(completions, answers, prompts=["p"] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert dapo_reward(completions=completions, answer=answers) == [1.0, 1.0, -1.0, -1.0]


def test_reward_rejects_bad_completions():
    with pytest.raises(TypeError, match="completion must be"):
        accuracy_reward([42], ["1"])
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        accuracy_reward(["a", "b"], ["1"])


@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_overlong_penalty(factor):
    penalty = make_overlong_penalty(max_completion_length=100, buffer_length=20, penalty_factor=factor)
    lengths = [10, 80, 81, 90, 100, 101, 500]
    got = penalty([[0] * n for n in lengths])
    # 0 up to 80 tokens, then linear to -factor at 100, -factor beyond
    assert got == pytest.approx([0.0, 0.0, -0.05 * factor, -0.5 * factor, -1.0 * factor, -factor, -factor])


def test_overlong_penalty_matches_trl():
    trl_rewards = pytest.importorskip("trl.rewards")
    ids = [[1] * n for n in range(0, 140, 7)]
    ours = make_overlong_penalty(128, 32)(ids)
    assert ours == pytest.approx(trl_rewards.get_soft_overlong_punishment(128, 32)(ids))


def test_overlong_penalty_pickles_and_keeps_its_metric_name():
    """TRL may send reward functions to a spawned process, and logs each under its __name__."""
    penalty = make_overlong_penalty(100, 20, 0.5)
    copy = pickle.loads(pickle.dumps(penalty))
    assert copy([[0] * 90, [0] * 10]) == penalty([[0] * 90, [0] * 10]) == [-0.25, 0.0]
    assert penalty.__name__ == "overlong_penalty"


def test_rewards_import_neither_torch_nor_trl():
    """Rewards run without the trl extra, in light processes (verl reward workers, answer checkers)."""
    code = "import sys, ktae.rewards; print(sorted(m for m in ('torch', 'trl') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]


def test_overlong_penalty_validates():
    with pytest.raises(ValueError, match="buffer_length"):
        make_overlong_penalty(100, 200)
    with pytest.raises(ValueError, match="max_completion_length"):
        make_overlong_penalty(0, 0)
    with pytest.raises(ValueError, match="penalty_factor"):
        make_overlong_penalty(100, 10, -1.0)


def test_compute_score_verl_style():
    assert compute_score("math", "... \\boxed{204}", "204") == {"score": 1.0, "acc": True, "pred": "204"}
    wrong = compute_score("math", "... \\boxed{205}", "204", extra_info={"index": 3}, incorrect_score=-1.0)
    assert wrong == {"score": -1.0, "acc": False, "pred": "205"}
    assert compute_score("math", "no answer", "204") == {"score": 0.0, "acc": False, "pred": ""}
    # ground truth as a numpy array of accepted answers (parquet list columns)
    assert compute_score("math", "\\boxed{2}", np.array(["1", "2"]))["acc"] is True


def test_references_may_be_numbers_and_nested_lists():
    completions = ["\\boxed{142}", "\\boxed{142}", "\\boxed{9.6}", "\\boxed{141}"]
    answers = [142.0, [142.0], [["9.6\n"]], 142]
    assert accuracy_reward(completions, answers) == [1.0, 1.0, 1.0, 0.0]
    assert dapo_reward(completions, answer=answers) == [1.0, 1.0, 1.0, -1.0]
    assert compute_score("amc", "so \\boxed{142}", 142.0)["acc"] is True
    assert compute_score("minerva", "\\boxed{0.003}", [["0.003^{\\prime \\prime}\n"]])["acc"] is True


def test_a_bare_string_of_answers_is_refused():
    """A str is a sequence of characters: 'answer="23"' would pair two completions with "2" and "3"."""
    with pytest.raises(TypeError, match="single str"):
        accuracy_reward(["\\boxed{2}", "\\boxed{3}"], answer="23")
    with pytest.raises(TypeError, match="single str"):
        dapo_reward("\\boxed{2}", answer=["2"])
