import pytest

from ktae.rewards import AnswerChecker


@pytest.fixture(scope="module")
def checker():
    """Two worker processes; a generous limit so that a loaded CI machine never times out a normal case."""
    with AnswerChecker(num_workers=2, timeout_s=10.0) as c:
        yield c
