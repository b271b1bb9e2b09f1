"""Mathematical answer equivalence through math-verify, every check under a time limit.

``check_answer`` is the comparison itself and has no time limit of its own: it only runs inside
``run_with_deadline`` (a SIGALRM timer in the main thread of the process that runs it). That
covers sympy's long Python loops, but not a long call inside C (a huge integer power), so
``AnswerChecker`` by default runs the checks in worker processes (``python -m
ktae.rewards._worker``, fresh interpreters: no fork of a training process, no re-import of the
user's script) and kills any worker that overruns its task's hard deadline. Callers may then be
any thread (verl scores in a thread pool, where math-verify's own signal timeouts refuse to run).

Only math-verify's LaTeX parser (ANTLR) reads model output: its plain-expression extractor goes
through ``sympy.parse_expr``, which ``eval``s, so it is not used.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from tqdm.auto import tqdm

DEFAULT_TIMEOUT_S = 5.0
# A worker gets this long to import sympy/math-verify before its first task's clock starts.
WORKER_STARTUP_TIMEOUT_S = 120.0
# Numbers that math-verify finds equal (it rounds to 6 decimals) must also agree to this relative
# tolerance, or every answer near 1e-27 (Minerva) would equal every other, and 0.
NUMERIC_RELATIVE_TOLERANCE = 1e-4


class _DropNoTimeoutNotice(logging.Filter):
    """math-verify warns once that its own timeouts are off; ours (run_with_deadline) are on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropNoTimeoutNotice())

_PERCENT = re.compile(r"\\?%\s*$")
_INTEGER = re.compile(r"^\s*[+-]?\d{1,100}\s*$")
_SCIENTIFIC = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)[eE]([+-]?\d+)\s*$")


@dataclass(frozen=True)
class Verdict:
    """One check's outcome. ``status``: "ok", "no_answer", "timeout" or "error" (not equivalent)."""

    equivalent: bool
    status: str = "ok"


class CheckTimeout(BaseException):
    """Raised by ``run_with_deadline``'s timer. A BaseException so that math-verify's and sympy's
    ``except Exception`` handlers do not swallow it and carry on past the deadline."""


def _answer_forms(answer: str) -> list[str]:
    """LaTeX forms math-verify should read for one answer: a trailing percent sign is read both as
    the number and as the number over 100 ("62.5%" matches 62.5 and 0.625); plain scientific
    notation "7.3e14" becomes "7.3\\times10^{14}" (LaTeX would read "e" as Euler's number)."""
    answer = answer.strip()
    scientific = _SCIENTIFIC.match(answer)
    if scientific:
        return [f"{scientific.group(1)}\\times10^{{{int(scientific.group(2))}}}"]
    if _PERCENT.search(answer):
        number = _PERCENT.sub("", answer).strip()
        return [number, f"\\frac{{{number}}}{{100}}"] if number else []
    return [answer]


@lru_cache(maxsize=2048)
def _parse(answer: str) -> tuple:
    """math-verify's parse of every form of ``answer`` (LaTeX extraction only), flattened."""
    from math_verify import LatexExtractionConfig, parse

    parsed = []
    for form in _answer_forms(answer):
        # Wrapping in \boxed makes math-verify take the whole answer as the expression.
        parsed.extend(parse(f"\\boxed{{{form}}}", extraction_config=[LatexExtractionConfig()], parsing_timeout=None))
    return tuple(parsed)


def _numbers_agree(gold, pred) -> bool:
    """False only when both are plain numbers that differ by more than the relative tolerance."""
    from sympy import Basic

    if not (isinstance(gold, Basic) and isinstance(pred, Basic)):
        return True
    if not (getattr(gold, "is_number", False) and getattr(pred, "is_number", False)):
        return True
    try:
        a, b = complex(gold.evalf(30)), complex(pred.evalf(30))
    except (TypeError, ValueError, OverflowError, ArithmeticError):
        return True
    return abs(a - b) <= NUMERIC_RELATIVE_TOLERANCE * max(abs(a), abs(b))


def check_answer(prediction: str | None, references: Sequence[str]) -> bool:
    """Whether ``prediction`` (an extracted answer) equals any of ``references``.

    No time limit of its own: call it through ``run_with_deadline`` or an ``AnswerChecker``.
    """
    if prediction is None or not prediction.strip():
        return False
    if _INTEGER.match(prediction) and all(_INTEGER.match(r) for r in references):
        # integers (AIME, AMC, much of MATH): the same verdict as math-verify without its LaTeX parser
        return any(int(prediction) == int(r) for r in references)
    from math_verify import verify

    predicted = _parse(prediction)
    if not predicted:
        return False
    for reference in references:
        for gold in _parse(reference):
            for pred in predicted:
                # math-verify's verify is not symmetric: gold first.
                if verify(gold, pred, timeout_seconds=None) and _numbers_agree(gold, pred):
                    return True
    return False


def run_with_deadline(prediction: str | None, references: Sequence[str], timeout_s: float) -> Verdict:
    """``check_answer`` under a SIGALRM timer of ``timeout_s`` seconds; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        raise ValueError(
            "in-process answer checking needs the main thread (it uses a SIGALRM timer); "
            "use AnswerChecker(num_workers>=1) from other threads"
        )
    if prediction is None or not prediction.strip():
        return Verdict(False, "no_answer")

    def on_alarm(signum, frame):
        raise CheckTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        try:
            # Re-fire every 50 ms: an alarm raised inside a weakref callback or __del__ is swallowed
            # by the interpreter, and the next one must still stop the check.
            signal.setitimer(signal.ITIMER_REAL, timeout_s, 0.05)
            return Verdict(check_answer(prediction, references))
        finally:  # an alarm that fires just before this line is still caught below
            signal.setitimer(signal.ITIMER_REAL, 0)
    except CheckTimeout:
        return Verdict(False, "timeout")
    except Exception:  # a parser bug on a strange answer is a wrong answer, not a crashed run
        logging.getLogger(__name__).debug("answer check failed", exc_info=True)
        return Verdict(False, "error")
    finally:
        signal.signal(signal.SIGALRM, previous)


def normalize_references(reference) -> list[str]:
    """A reference answer (str, or a non-empty sequence of str: any of them is accepted) as a list."""
    if isinstance(reference, str):
        return [reference]
    if hasattr(reference, "tolist"):  # numpy arrays from parquet columns
        reference = reference.tolist()
    if isinstance(reference, Sequence) and reference and all(isinstance(r, str) for r in reference):
        return list(reference)
    raise TypeError(f"a reference answer must be a str or a non-empty list of str, got {reference!r:.200}")


class _Worker:
    """One ``python -m ktae.rewards._worker`` process; JSON lines over its stdin/stdout."""

    def __init__(self, memory_limit_mb: int | None):
        command = [sys.executable, "-m", "ktae.rewards._worker"]
        if memory_limit_mb:
            command += ["--memory-limit-mb", str(memory_limit_mb)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.ready = False

    def send(self, message: dict) -> None:
        self.process.stdin.write((json.dumps(message) + "\n").encode())

    def receive(self) -> dict | None:
        """The next message; ``None`` when the worker has died."""
        line = self.process.stdout.readline()
        return json.loads(line) if line else None

    def close(self, kill: bool = False) -> None:
        try:
            if kill:
                self.process.kill()
            else:
                self.process.stdin.close()
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
    Thread-safe: several threads may call ``verdicts`` at once and share the workers.
    """

    def __init__(
        self, num_workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, memory_limit_mb: int | None = 4096
    ):
        if num_workers is None:
            num_workers = min(8, os.cpu_count() or 1)
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.memory_limit_mb = memory_limit_mb
        self._idle: list[_Worker] = []
        self._started = 0
        self._available = threading.Condition()
        self._closed = False

    def __enter__(self) -> AnswerChecker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check(self, answers: Sequence[str | None], references: Sequence, timeout_s: float | None = None) -> list[bool]:
        """Whether each answer equals (any of) its references; see ``verdicts``."""
        return [v.equivalent for v in self.verdicts(answers, references, timeout_s)]

    def verdicts(
        self,
        answers: Sequence[str | None],
        references: Sequence,
        timeout_s: float | None = None,
        progress: str | None = None,
    ) -> list[Verdict]:
        """One ``Verdict`` per answer. ``answers``: extracted answers (None: no answer);
        ``references``: per answer, a str or a list of accepted str; ``progress``: the label of a
        progress bar over the checks (none when None)."""
        if len(answers) != len(references):
            raise ValueError(f"got {len(answers)} answers but {len(references)} references")
        timeout_s = self.timeout_s if timeout_s is None else float(timeout_s)
        # A step's rollouts repeat answers (the right one most of all): check each distinct pair once.
        distinct: dict[tuple[str, tuple[str, ...]], int] = {}
        slot_of = []
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
                    checked[i] = run_with_deadline(answer, refs, timeout_s)
                    bar.update()
            elif pairs:
                self._run_in_workers(pairs, timeout_s, checked, bar)
        return [Verdict(False, "no_answer") if slot is None else checked[slot] for slot in slot_of]

    def _run_in_workers(self, pairs: list[tuple[str, tuple[str, ...]]], timeout_s: float, results: list, bar) -> None:
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
                        worker.send({"answer": pairs[i][0], "references": pairs[i][1], "timeout_s": timeout_s})
                    except OSError:  # died while idle: replace it and retry the task
                        self._discard(worker)
                        pending.appendleft(i)
                        continue
                    busy[worker] = (i, deadline_for(worker))
                wait_s = max(0.0, min(deadline for _, deadline in busy.values()) - time.monotonic())
                readable, _, _ = select.select([w.process.stdout for w in busy], [], [], wait_s)
                for worker in [w for w in busy if w.process.stdout in readable]:
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
            return _Worker(self.memory_limit_mb)
        except BaseException:
            self._discard(None)
            raise

    def _release(self, worker: _Worker) -> None:
        with self._available:
            if self._closed:
                worker.close()
                return
            self._idle.append(worker)
            self._available.notify()

    def _discard(self, worker: _Worker | None, kill: bool = False) -> None:
        if worker is not None:
            worker.close(kill=kill)
        with self._available:
            self._started -= 1
            self._available.notify()

    def close(self) -> None:
        """Stops the idle workers; workers busy in another thread stop when their batch ends."""
        with self._available:
            self._closed = True
            idle, self._idle = self._idle, []
            self._available.notify_all()
        for worker in idle:
            worker.close()


_default_checker: AnswerChecker | None = None
_default_lock = threading.Lock()


def default_checker() -> AnswerChecker:
    """The process-wide checker used by ``is_equivalent`` and the reward functions, created on first
    use. Environment: KTAE_REWARD_WORKERS (default min(8, CPUs); 0 = in-process) and
    KTAE_REWARD_TIMEOUT_S (default 5)."""
    global _default_checker
    with _default_lock:
        if _default_checker is None:
            workers = os.environ.get("KTAE_REWARD_WORKERS")
            _default_checker = AnswerChecker(
                num_workers=int(workers) if workers else None,
                timeout_s=float(os.environ.get("KTAE_REWARD_TIMEOUT_S", DEFAULT_TIMEOUT_S)),
            )
            atexit.register(_default_checker.close)
        return _default_checker


def is_equivalent(prediction: str, reference: str | Sequence[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether the answer ``prediction`` equals ``reference`` (or any of a list of references).

    ``prediction`` is an answer, not a whole response (see ``extract_answer``). The check runs in
    the default checker's worker processes with a hard deadline of about ``timeout_s`` seconds;
    callable from any thread. A timeout counts as not equivalent.
    """
    return default_checker().verdicts([prediction], [reference], timeout_s)[0].equivalent
