"""The answer checker's worker processes: hard deadlines, start-up failures, threads, the process-wide
checker and its environment, and workers that die with their parent but not with the thread that
started them."""

import os
import signal
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


def _fork_cases(seed: int) -> tuple[list[str], list[str], list[bool]]:
    """Distinct checks whose verdicts are known; a reply read by the wrong process shows as a wrong one."""
    answers, references, expected = [], [], []
    for i in range(60):
        n = 1000 * seed + i
        right = (i + seed) % 3 != 0
        answers.append(f"\\frac{{{2 * n}}}{{2}}" if i % 2 else str(n))
        references.append(str(n if right else n + 1))
        expected.append(right)
    return answers, references, expected


def _check_in_child(checker: AnswerChecker, seed: int) -> str:
    """Three rounds of checks, the first from a thread (the first workers of the child start from it)."""
    answers, references, expected = _fork_cases(seed)
    verdicts: list[list[bool]] = []
    in_thread = threading.Thread(target=lambda: verdicts.append(checker.check(answers, references)))
    in_thread.start()
    in_thread.join()
    for _ in range(2):
        verdicts.append(checker.check(answers, references))
    wrong = sum(v != e for checked in verdicts for v, e in zip(checked, expected))
    return f"wrong {wrong + 3 - len(verdicts)}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_children_get_their_own_workers():
    """A child forked from a process whose checker has workers checks through workers of its own: checks in
    several children at once and in the busy parent all get their own verdicts, and the parent's workers
    are left as they were."""
    with AnswerChecker(num_workers=2, timeout_s=20.0) as checker:
        answers, references, expected = _fork_cases(0)
        warm_up = threading.Thread(target=checker.check, args=(answers, references))
        warm_up.start()  # the parent's two workers start from the launcher thread, which a child lacks
        warm_up.join()
        assert checker.check(answers, references) == expected
        parent_workers = sorted(w.process.pid for w in checker._idle)
        children = {}
        for seed in range(1, 5):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: report the wrong verdicts (or the error) and leave at once
                os.close(read_end)
                signal.alarm(240)  # a child that hangs dies instead of holding up the test
                try:
                    report = _check_in_child(checker, seed)
                except BaseException as error:
                    report = f"error {type(error).__name__}: {error}"
                os.write(write_end, report.encode())
                os._exit(0)
            os.close(write_end)
            children[pid] = read_end
        wrong_in_parent, running = 0, set(children)
        while running:  # the parent checks too, all the while
            wrong_in_parent += sum(v != e for v, e in zip(checker.check(answers, references), expected))
            running = {pid for pid in running if os.waitpid(pid, os.WNOHANG) == (0, 0)}
        reports = []
        for read_end in children.values():
            with os.fdopen(read_end, "rb") as pipe:
                reports.append(pipe.read().decode())
        assert reports == ["wrong 0"] * 4
        assert wrong_in_parent == 0
        assert sorted(w.process.pid for w in checker._idle) == parent_workers  # neither used nor killed
        assert checker.check(answers, references) == expected
