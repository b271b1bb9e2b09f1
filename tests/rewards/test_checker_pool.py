"""The answer checker's worker processes: hard deadlines, start-up failures, threads, the process-wide
checker and its environment, and workers that die with their parent but not with the thread that
started them."""

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ktae.rewards import AnswerChecker, Verdict, is_equivalent


def test_hard_deadline_kills_a_stuck_worker():
    """A worker that cannot run its own timer (here: stopped) is killed and replaced."""
    import os
    import signal

    with AnswerChecker(num_workers=1, timeout_s=0.5) as checker:
        assert checker.check(["2"], ["2"]) == [True]
        (worker,) = checker._idle
        os.kill(worker.process.pid, signal.SIGSTOP)
        start = time.monotonic()
        assert checker.verdicts(["2"], ["2"]) == [Verdict(False, "timeout")]
        assert time.monotonic() - start < 5
        assert worker.process.poll() is not None  # killed
        assert checker.check(["2"], ["2"]) == [True]  # a fresh worker took over


def test_worker_that_cannot_start_is_an_error(monkeypatch):
    monkeypatch.setattr("sys.executable", "false")  # exits at once, before its ready line
    with AnswerChecker(num_workers=1) as checker, pytest.raises(RuntimeError, match="exited while starting"):
        checker.check(["1"], ["1"])


def test_is_equivalent_from_threads():
    """verl scores from a thread pool, where signal-based timeouts cannot run."""
    pairs = [("\\frac{1}{2}", "0.5", True), ("3", "x=3", True), ("2", "3", False), ("62.5\\%", "0.625", True)] * 3
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: is_equivalent(c[0], c[1]), pairs))
    assert results == [expected for *_, expected in pairs]


@pytest.fixture
def fresh_default_checker(monkeypatch):
    """The process-wide checker built again from the environment, closed and restored afterwards."""
    from ktae.rewards import checker_pool

    monkeypatch.setattr(checker_pool, "_default_checker", None)
    yield
    if checker_pool._default_checker is not None:
        checker_pool._default_checker.close()


@pytest.mark.parametrize(
    "name, value",
    [
        ("KTAE_REWARD_TIMEOUT_S", "0"),
        ("KTAE_REWARD_TIMEOUT_S", "inf"),
        ("KTAE_REWARD_TIMEOUT_S", "abc"),
        ("KTAE_REWARD_WORKERS", "-1"),
        ("KTAE_REWARD_WORKERS", "two"),
    ],
)
def test_bad_environment_is_named(monkeypatch, fresh_default_checker, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        is_equivalent("1", "1")


def test_is_equivalent_follows_the_environments_time_limit(monkeypatch, fresh_default_checker):
    monkeypatch.setenv("KTAE_REWARD_WORKERS", "0")
    monkeypatch.setenv("KTAE_REWARD_TIMEOUT_S", "0.3")
    assert is_equivalent("\\frac{1}{2}", "0.5")  # imports done
    start = time.monotonic()
    assert not is_equivalent("\\sum_{k=1}^{10^{12}} k^{k}", "5")
    assert time.monotonic() - start < 3.0  # 0.3 s, not the 5 s default


def _children(pid: int) -> list[int]:
    from pathlib import Path

    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_worker_dies_with_its_parent():
    import subprocess

    script = (
        "import sys, threading, time\n"
        "from ktae.rewards import AnswerChecker\n"
        "checker = AnswerChecker(num_workers=1, timeout_s=120.0)\n"
        "assert checker.check(['1'], ['1']) == [True]\n"
        # a check that runs far longer than this test, started from a thread that then ends
        "threading.Thread(target=checker.check, args=([\"\\\\sum_{k=1}^{10^{12}} k^{k}\"], ['5'])).start()\n"
        "time.sleep(1.0)\n"
        "print('busy', flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "busy"
        (worker,) = _children(parent.pid)
        assert _alive(worker)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its parent"
    finally:
        parent.kill()
        parent.wait()


def test_a_worker_started_from_a_thread_outlives_that_thread():
    """The kernel's parent-death signal follows the thread that started a process; a worker must
    not die when the thread-pool thread that started it ends."""
    with AnswerChecker(num_workers=1, timeout_s=10.0) as checker:
        thread = threading.Thread(target=checker.check, args=(["1"], ["1"]))
        thread.start()
        thread.join()
        (worker,) = checker._idle
        time.sleep(0.5)
        assert worker.process.poll() is None
        assert checker.check(["x+1"], ["1+x"]) == [True]
        assert checker._idle == [worker]
