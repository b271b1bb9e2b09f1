"""The answer checker: batches of (answer, references) pairs checked in worker processes, each under a time limit.

Each check runs `ktae.rewards.equivalence.run_with_deadline` in a worker process (``python -m
ktae.rewards._worker``, the other end of the protocol: fresh interpreters, so no fork of a training
process and no re-import of the user's script), and the parent kills any worker that overruns its
task's hard deadline, which also stops a long call inside C (a huge integer power) that the worker's
own timer cannot interrupt. Callers may then be any thread (verl scores in a thread pool, where
math-verify's own signal timeouts refuse to run). ``num_workers=0`` checks in the calling process.

A forked child (multiprocessing's "fork", DataLoader workers) inherits the checkers but not their
workers: the pipes to those belong to the parent, and two processes reading one pipe take each
other's replies. At the fork, each checker of the child lets go of its copies of them, untouched,
and starts workers of its own when it next checks.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from typing import IO, Any, cast

from tqdm.auto import tqdm

from ktae.rewards.equivalence import (
    DEFAULT_GRADER,
    DEFAULT_TIMEOUT_S,
    Reference,
    Verdict,
    get_grader,
    normalize_references,
    run_with_deadline,
    validate_timeout,
)

# A worker gets this long to import sympy/math-verify before its first task's clock starts.
WORKER_STARTUP_TIMEOUT_S = 120.0


class _Launcher:
    """Starts processes from one thread that lives as long as the interpreter.

    A worker asks the kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``), and "parent"
    there means the thread that started it: a worker started from a thread-pool thread would die
    with that thread. The main thread starts its own; other threads hand the start to this one.
    """

    def __init__(self) -> None:
        self.after_fork()

    def after_fork(self) -> None:
        """A fresh start (in a forked child the thread of the parent does not exist)."""
        self._requests: queue.SimpleQueue[tuple[list[str], dict[str, Any], Future[subprocess.Popen[bytes]]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        if threading.current_thread() is threading.main_thread():
            return subprocess.Popen(command, **kwargs)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="ktae-worker-launcher", daemon=True)
                self._thread.start()
        started: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((command, kwargs, started))
        return started.result()

    def _serve(self) -> None:
        while True:
            command, kwargs, started = self._requests.get()
            try:
                started.set_result(subprocess.Popen(command, **kwargs))
            except Exception as e:  # handed to the thread that asked
                started.set_exception(e)


_launcher = _Launcher()


class _Worker:
    """One ``python -m ktae.rewards._worker`` process; JSON lines over its stdin/stdout."""

    def __init__(self, memory_limit_mb: int | None):
        command = [sys.executable, "-m", "ktae.rewards._worker", "--parent-pid", str(os.getpid())]
        if memory_limit_mb:
            command += ["--memory-limit-mb", str(memory_limit_mb)]
        self.process = _launcher.popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        # Both are pipes, as asked for above.
        self.stdin = cast(IO[bytes], self.process.stdin)
        self.stdout = cast(IO[bytes], self.process.stdout)
        self.ready = False

    def send(self, message: dict[str, Any]) -> None:
        self.stdin.write((json.dumps(message) + "\n").encode())

    def receive(self) -> dict[str, Any] | None:
        """The next message; ``None`` when the worker has died."""
        line = self.stdout.readline()
        return json.loads(line) if line else None

    def disown(self) -> None:
        """In a forked child: close this process's copies of the pipes, leaving the process to its parent."""
        self.stdin.close()  # unbuffered (bufsize=0): nothing to flush into the parent's worker
        self.stdout.close()

    def close(self, kill: bool = False) -> None:
        try:
            if kill:
                self.process.kill()
            else:
                self.stdin.close()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


class AnswerChecker:
    """Checks batches of (answer, references) pairs, each under a time limit.

    num_workers: worker processes (started on demand, killed and replaced when a check overruns
        its hard deadline); None picks min(8, CPUs); 0 checks in the calling process under a
        SIGALRM timer (main thread only, and a long call inside C cannot be interrupted).
    timeout_s: time limit of one check (all reference answers of one prediction).
    memory_limit_mb: address space each worker may add to what it maps at start-up (Linux), so a
        huge power fails fast instead of swapping; None for no limit.
    grader: the rule of every check, a name in `ktae.rewards.equivalence.GRADERS`: "ktae" (ours) or
        "math-verify" (stock, as TRL calls it), whose predictions are whole responses
        (``self.rule.prediction`` picks what to pass).
    Thread-safe: several threads may call ``verdicts`` at once and share the workers.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_limit_mb: int | None = 4096,
        grader: str = DEFAULT_GRADER,
    ):
        if num_workers is None:
            num_workers = min(8, os.cpu_count() or 1)
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers = num_workers
        self.timeout_s = validate_timeout(timeout_s)
        self.memory_limit_mb = memory_limit_mb
        self.rule = get_grader(grader)
        self.grader = grader
        self._idle: list[_Worker] = []
        self._running: set[_Worker] = set()  # every live worker, idle or busy
        self._started = 0
        self._available = threading.Condition()
        self._closed = False
        _checkers.add(self)

    def __enter__(self) -> AnswerChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(
        self, answers: Sequence[str | None], references: Sequence[Reference], timeout_s: float | None = None
    ) -> list[bool]:
        """Whether each answer equals (any of) its references; see ``verdicts``."""
        return [v.equivalent for v in self.verdicts(answers, references, timeout_s)]

    def verdicts(
        self,
        answers: Sequence[str | None],
        references: Sequence[Reference],
        timeout_s: float | None = None,
        progress: str | None = None,
    ) -> list[Verdict]:
        """One ``Verdict`` per answer. ``answers``: extracted answers (None: no answer);
        ``references``: per answer, a str or a list of accepted str; ``progress``: the label of a
        progress bar over the checks (none when None)."""
        if len(answers) != len(references):
            raise ValueError(f"got {len(answers)} answers but {len(references)} references")
        timeout_s = self.timeout_s if timeout_s is None else validate_timeout(timeout_s)
        # A step's rollouts repeat answers (the right one most of all): check each distinct pair once.
        distinct: dict[tuple[str, tuple[str, ...]], int] = {}
        slot_of: list[int | None] = []
        for i, (answer, reference) in enumerate(zip(answers, references)):
            if answer is not None and not isinstance(answer, str):
                raise TypeError(f"answer {i} must be a str or None, got {type(answer).__name__}")
            refs = tuple(normalize_references(reference))
            if answer is None or not answer.strip():
                slot_of.append(None)
            else:
                slot_of.append(distinct.setdefault((answer, refs), len(distinct)))
        pairs = list(distinct)
        checked: list[Verdict | None] = [None] * len(pairs)
        with tqdm(total=len(pairs), desc=progress, unit="check", disable=progress is None) as bar:
            if self.num_workers == 0:
                for i, (answer, refs) in enumerate(pairs):
                    checked[i] = run_with_deadline(answer, refs, timeout_s, self.grader)
                    bar.update()
            elif pairs:
                self._run_in_workers(pairs, timeout_s, checked, bar)
        verdicts = cast(list[Verdict], checked)  # every pair was checked above
        return [Verdict(False, "no_answer") if slot is None else verdicts[slot] for slot in slot_of]

    def _run_in_workers(
        self,
        pairs: list[tuple[str, tuple[str, ...]]],
        timeout_s: float,
        results: list[Verdict | None],
        bar: tqdm,
    ) -> None:
        hard_timeout_s = timeout_s + max(1.0, 0.5 * timeout_s)  # the worker's own timer fires first
        busy: dict[_Worker, tuple[int, float]] = {}  # worker -> (answer index, hard deadline)

        def deadline_for(worker: _Worker) -> float:
            return time.monotonic() + (hard_timeout_s if worker.ready else WORKER_STARTUP_TIMEOUT_S + hard_timeout_s)

        pending = deque(range(len(pairs)))
        try:
            while pending or busy:
                while pending:
                    worker = self._acquire(block=not busy)
                    if worker is None:
                        break
                    i = pending.popleft()
                    try:
                        task = {"answer": pairs[i][0], "references": pairs[i][1], "timeout_s": timeout_s}
                        worker.send({**task, "grader": self.grader})
                    except OSError:  # died while idle: replace it and retry the task
                        self._discard(worker)
                        pending.appendleft(i)
                        continue
                    busy[worker] = (i, deadline_for(worker))
                wait_s = max(0.0, min(deadline for _, deadline in busy.values()) - time.monotonic())
                readable, _, _ = select.select([w.stdout for w in busy], [], [], wait_s)
                for worker in [w for w in busy if w.stdout in readable]:
                    message = worker.receive()
                    i, _ = busy[worker]
                    if message is None:
                        del busy[worker]
                        self._discard(worker)
                        if not worker.ready:
                            raise RuntimeError(
                                f"an answer-checking worker exited while starting (exit code "
                                f"{worker.process.returncode}); its error is on stderr"
                            )
                        results[i] = Verdict(False, "error")  # crashed on this answer (e.g. out of memory)
                        bar.update()
                    elif message.get("ready"):
                        worker.ready = True
                        busy[worker] = (i, deadline_for(worker))
                    else:
                        del busy[worker]
                        self._release(worker)
                        results[i] = Verdict(bool(message["equivalent"]), str(message["status"]))
                        bar.update()
                now = time.monotonic()
                for worker in [w for w, (_, deadline) in busy.items() if deadline <= now]:
                    i, _ = busy.pop(worker)
                    self._discard(worker, kill=True)
                    results[i] = Verdict(False, "timeout")
                    bar.update()
        finally:  # an interrupted batch leaves no worker with a stale task behind
            for worker in busy:
                self._discard(worker, kill=True)

    def _acquire(self, block: bool) -> _Worker | None:
        with self._available:
            while True:
                if self._closed:
                    raise RuntimeError("AnswerChecker is closed")
                if self._idle:
                    return self._idle.pop()
                if self._started < self.num_workers:
                    self._started += 1
                    break
                if not block:
                    return None
                self._available.wait()
        try:
            worker = _Worker(self.memory_limit_mb)
        except BaseException:
            self._discard(None)
            raise
        with self._available:
            self._running.add(worker)
        return worker

    def _release(self, worker: _Worker) -> None:
        with self._available:
            if self._closed:
                self._running.discard(worker)
                worker.close()
                return
            self._idle.append(worker)
            self._available.notify()

    def _discard(self, worker: _Worker | None, kill: bool = False) -> None:
        if worker is not None:
            worker.close(kill=kill)
        with self._available:
            if worker is not None:
                self._running.discard(worker)
            self._started -= 1
            self._available.notify()

    def _after_fork(self) -> None:
        """In a forked child (the only thread there): no workers yet; the inherited ones stay the parent's."""
        inherited, self._running, self._idle, self._started = self._running, set(), [], 0
        self._available = threading.Condition()  # a thread of the parent may have held it at the fork
        for worker in inherited:
            worker.disown()

    def close(self) -> None:
        """Stops the idle workers; workers busy in another thread stop when their batch ends."""
        with self._available:
            self._closed = True
            idle, self._idle = self._idle, []
            self._running.difference_update(idle)
            self._available.notify_all()
        for worker in idle:
            worker.close()


_default_checker: AnswerChecker | None = None
_default_lock = threading.Lock()
# The checkers of this process, for `_after_fork_in_child`.
_checkers: weakref.WeakSet[AnswerChecker] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _default_lock
    _launcher.after_fork()
    _default_lock = threading.Lock()
    for checker in list(_checkers):
        checker._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def default_checker() -> AnswerChecker:
    """The process-wide checker used by ``is_equivalent`` and the reward functions, created on first
    use. Environment: KTAE_REWARD_WORKERS (default min(8, CPUs); 0 = in-process) and
    KTAE_REWARD_TIMEOUT_S (default 5)."""
    global _default_checker
    with _default_lock:
        if _default_checker is None:
            workers = os.environ.get("KTAE_REWARD_WORKERS", "").strip()
            if workers and not workers.isdigit():
                raise ValueError(f"KTAE_REWARD_WORKERS must be a whole number >= 0, got {workers!r}")
            timeout_s = validate_timeout(
                os.environ.get("KTAE_REWARD_TIMEOUT_S", DEFAULT_TIMEOUT_S), "KTAE_REWARD_TIMEOUT_S"
            )
            _default_checker = AnswerChecker(num_workers=int(workers) if workers else None, timeout_s=timeout_s)
            atexit.register(_default_checker.close)
        return _default_checker


def is_equivalent(prediction: str, reference: Reference, timeout_s: float | None = None) -> bool:
    """Whether the answer ``prediction`` equals ``reference`` (see ``normalize_references``: a str, a
    number, or a list of accepted answers).

    ``prediction`` is an answer, not a whole response (see ``extract_answer``). The check runs in
    the default checker's worker processes with a hard deadline of about ``timeout_s`` seconds
    (default: the default checker's, ``KTAE_REWARD_TIMEOUT_S``); callable from any thread. A
    timeout counts as not equivalent.
    """
    return default_checker().verdicts([prediction], [reference], timeout_s)[0].equivalent
