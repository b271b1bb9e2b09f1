"""benchmarks/arithmetic_errors.py: the step-by-step fault classifier, digit use and the KTAE/base pairing."""

import importlib.util
import random
from pathlib import Path

import pytest

from ktae.data.synthetic import ArithmeticTask, sample_problem

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "arithmetic_errors.py"


@pytest.fixture(scope="module")
def errors():
    spec = importlib.util.spec_from_file_location("arithmetic_errors", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_worked_solutions_have_no_fault(errors):
    rng = random.Random(0)
    task = ArithmeticTask(min_terms=2, max_terms=5, operations="+-")
    for _ in range(200):
        row = sample_problem(rng, task)
        assert errors.first_fault(row["prompt"], row["completion"]) is None, row


@pytest.mark.parametrize(
    ("response", "fault"),
    [
        ("7+5=12\n12-3=9\n\\boxed{9}", None),
        ("7+6=13\n13-3=10\n\\boxed{10}", "miscopied operand"),  # right side is not the next term
        ("7+5=12\n11-3=8\n\\boxed{8}", "miscopied operand"),  # left side is not the previous result
        ("7+5=12\n12+3=15\n\\boxed{15}", "miscopied operand"),  # wrong operator
        ("7+5=13\n13-3=10\n\\boxed{10}", "wrong result"),  # counted once, at the first step
        ("7+5=12\n12-3=9\n\\boxed{8}", "wrong boxed value"),
        ("7+5=12\n\\boxed{12}", "missing step"),
        ("7+5=12", "missing step"),
        ("7+5=12\n12-3=9\n9+1=10\n\\boxed{10}", "extra step"),
        ("7+5=12\n12-3=9\n", "malformed step"),
        ("7+5=12\n12-3=9", "no boxed answer"),
        ("\\boxed{9}", "missing step"),
    ],
)
def test_first_fault_names_the_first_faulty_line(errors, response, fault):
    assert errors.first_fault("7+5-3=", response) == fault


def test_first_fault_follows_a_negative_running_value(errors):
    assert errors.first_fault("2-5+1=", "2-5=-3\n-3+1=-2\n\\boxed{-2}") is None
    assert errors.first_fault("2-5+1=", "2-5=-3\n3+1=4\n\\boxed{4}") == "miscopied operand"


def test_digit_use_against_the_correct_solutions(errors):
    use = errors.digit_use(["1+1=2\n\\boxed{2}"], ["1+2=3\n\\boxed{3}"])
    assert use["1"] == 2.0 and use["2"] == 2.0 and use["3"] == 0.0 and use["4"] is None


def test_pairs_report_the_blamed_digits_use_in_both_runs(errors):
    def run(use, bonus):
        return {"digit_use": dict.fromkeys(errors.DIGITS, 1.0) | use, "digit_bonus": bonus}

    runs = {
        "DAPO+KTAE": {0: run({"3": 0.5, "8": 0.7}, {"3": -24.0, "8": -18.0, "2": -1.0, "0": 5.0}), 1: run({}, {})},
        "DAPO": {0: run({"3": 0.9, "8": 0.8}, {})},
    }
    (pair,) = errors.pair_digit_use(runs, {"DAPO+KTAE": "DAPO"}, top=2)
    assert (pair["seed"], list(pair["blamed"])) == (0, ["3", "8"])
    assert pair["use_ktae"] == pytest.approx(0.6) and pair["use_base"] == pytest.approx(0.85)
