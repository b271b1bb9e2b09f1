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
import math
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import lru_cache
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeAlias, cast

from tqdm.auto import tqdm

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# One reference: an accepted answer (str or number), or a list, tuple or array of them, nested to any
# depth (see ``normalize_references``).
Reference: TypeAlias = "str | int | float | Sequence[Reference] | npt.NDArray[Any] | np.generic"

DEFAULT_TIMEOUT_S = 5.0
# The longest time limit a check may have (SIGALRM timers overflow far above it).
MAX_TIMEOUT_S = 86_400.0
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
# One pair of math delimiters around the whole answer: $...$, $$...$$, \(...\), \[...\].
_DELIMITED = re.compile(r"^(?:\$\$([^$]*)\$\$|\$([^$]*)\$|\\\(([\s\S]*)\\\)|\\\[([\s\S]*)\\\])$")
# A number followed by an ordinal suffix (12th, 12^{th}, 12^{\text{th}}) or by prime marks
# (arcminutes/arcseconds, feet/inches: 0.003'', 0.003^{\prime\prime}): the mark is a unit, and
# units are dropped like math-verify drops ^\circ and \text{ cm}.
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_SUFFIX = r"(?:\\(?:text|textrm|mathrm|mbox|textsuperscript)\s*\{\s*(?:st|nd|rd|th)\s*\}|st|nd|rd|th)"
_PRIMES = r"(?:(?:\\prime|')\s*)+"
_NUMBER_WITH_MARK = re.compile(
    rf"^({_NUMBER})\s*(?:\^\s*\{{\s*(?:{_SUFFIX}|{_PRIMES})\s*\}}|\^\s*(?:{_SUFFIX}|\\prime)|{_SUFFIX}|['′″]+)$"
)
# An element "name = value" of a comma-separated answer, where name is one letter (subscripts
# allowed) or a Greek letter: "a = -2, b = -2" names the variables of the tuple (-2, -2).
_NAMED_VALUE = re.compile(r"^\s*(?:[A-Za-z](?:_\{?\w+\}?)?|\\[A-Za-z]+)\s*=\s*([^=<>]+?)\s*$")


@dataclass(frozen=True)
class Verdict:
    """One check's outcome. ``status``: "ok", "no_answer", "timeout" or "error" (not equivalent)."""

    equivalent: bool
    status: str = "ok"


class CheckTimeout(BaseException):
    """Raised by ``run_with_deadline``'s timer. A BaseException so that math-verify's and sympy's
    ``except Exception`` handlers do not swallow it and carry on past the deadline."""


def _top_level_parts(answer: str) -> list[str]:
    """``answer`` split at the commas outside any brackets or braces."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(answer):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(answer[start:i])
            start = i + 1
    parts.append(answer[start:])
    return parts


def _strip_delimiters(answer: str) -> str:
    """``answer`` without one pair of math delimiters around all of it ("$8 \\%$" -> "8 \\%")."""
    answer = answer.strip()
    delimited = _DELIMITED.match(answer)
    return answer if delimited is None else next(g for g in delimited.groups() if g is not None).strip()


def _without_names(answer: str) -> tuple[str, int] | None:
    """ "a = -2, b = -2" -> ("-2, -2", 2); None unless the answer is two or more such named values."""
    parts = _top_level_parts(_strip_delimiters(answer))
    if len(parts) < 2:
        return None
    values = [_NAMED_VALUE.match(part) for part in parts]
    named = [value.group(1) for value in values if value is not None]
    if len(named) < len(values):
        return None
    return ", ".join(named), len(named)


def _answer_forms(answer: str) -> list[str]:
    """LaTeX forms math-verify should read for one answer (any of them may match):

    - math delimiters around the whole answer are dropped ("$8 \\%$" is "8 \\%");
    - plain scientific notation "7.3e14" becomes "7.3\\times10^{14}" (LaTeX would read "e" as
      Euler's number);
    - a trailing percent sign is read both as the number and as the number over 100 ("62.5%"
      matches 62.5 and 0.625);
    - a number's ordinal suffix or prime marks are dropped ("12^{\\text{th}}" is 12).
    """
    answer = _strip_delimiters(answer)
    scientific = _SCIENTIFIC.match(answer)
    if scientific:
        return [f"{scientific.group(1)}\\times10^{{{int(scientific.group(2))}}}"]
    if _PERCENT.search(answer):
        number = _PERCENT.sub("", answer).strip()
        return [number, f"\\frac{{{number}}}{{100}}"] if number else []
    marked = _NUMBER_WITH_MARK.match(answer)
    return [marked.group(1)] if marked else [answer]


@lru_cache(maxsize=2048)
def _parse(answer: str) -> tuple[Any, ...]:
    """math-verify's parse of every form of ``answer`` (LaTeX extraction only), flattened."""
    from math_verify import LatexExtractionConfig, parse

    parsed: list[Any] = []  # sympy expressions and strings
    for form in _answer_forms(answer):
        # Wrapping in \boxed makes math-verify take the whole answer as the expression.
        parsed.extend(parse(f"\\boxed{{{form}}}", extraction_config=[LatexExtractionConfig()], parsing_timeout=None))
    return tuple(parsed)


def load_parser() -> None:
    """Import math-verify, sympy and the LaTeX parser and build their caches, once. Never under a
    check's timer: an import cut short by the timer leaves a parser that fails on every later answer."""
    _parse("0")


def _numbers_agree(gold: Any, pred: Any) -> bool:
    """False only when both are plain numbers that differ by more than the relative tolerance.

    Compared in sympy's floats, whose exponent is unbounded: 2^{2005} or 1000! (beyond a Python
    float) compare like any other number.
    """
    from sympy import Basic

    if not (isinstance(gold, Basic) and isinstance(pred, Basic)):
        return True
    if not (getattr(gold, "is_number", False) and getattr(pred, "is_number", False)):
        return True
    try:
        a, b = gold.evalf(30), pred.evalf(30)
        return bool(abs(a - b) <= NUMERIC_RELATIVE_TOLERANCE * max(abs(a), abs(b)))
    except (TypeError, ValueError, OverflowError, ArithmeticError):  # not comparable as numbers: verify decided
        return True


def check_answer(prediction: str | None, references: Sequence[str]) -> bool:
    """Whether ``prediction`` (an extracted answer) equals any of ``references``.

    No time limit of its own: call it through ``run_with_deadline`` or an ``AnswerChecker``.
    """
    if prediction is None or not prediction.strip():
        return False
    if any(prediction.strip() == reference.strip() for reference in references):
        return True  # the same text is the same answer, however hard it is to parse or evaluate
    if _INTEGER.match(prediction) and all(_INTEGER.match(r) for r in references):
        # integers (AIME, AMC, much of MATH): the same verdict as math-verify without its LaTeX parser
        return any(int(prediction) == int(r) for r in references)
    from math_verify import verify

    predicted = _parse(prediction)
    unnamed = _without_names(prediction)
    for reference in references:
        candidates = predicted
        if unnamed is not None and len(_top_level_parts(_strip_delimiters(reference))) == unnamed[1]:
            # "a = -2, b = -2" also reads as the list "-2, -2", against a list of as many values only:
            # "x = 2, y = 2" does not answer "2"
            candidates = predicted + _parse(unnamed[0])
        for gold in _parse(reference):
            for pred in candidates:
                # math-verify's verify is not symmetric: gold first.
                if verify(gold, pred, timeout_seconds=None) and _numbers_agree(gold, pred):
                    return True
    return False


def run_with_deadline(prediction: str | None, references: Sequence[str], timeout_s: float) -> Verdict:
    """``check_answer`` under a SIGALRM timer of ``timeout_s`` seconds; main thread only."""
    timeout_s = validate_timeout(timeout_s)
    if threading.current_thread() is not threading.main_thread():
        raise ValueError(
            "in-process answer checking needs the main thread (it uses a SIGALRM timer); "
            "use AnswerChecker(num_workers>=1) from other threads"
        )
    if prediction is None or not prediction.strip():
        return Verdict(False, "no_answer")
    load_parser()

    def on_alarm(signum: int, frame: FrameType | None) -> NoReturn:
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


def normalize_references(reference: Reference) -> list[str]:
    """The accepted answers of one reference, as a list of distinct stripped str.

    A reference is a str, a number (an integral float is the integer: 142.0 -> "142"), or a list or
    tuple of them nested to any depth (numpy arrays from parquet columns too), flattened; any of its
    answers is accepted. Anything else, or no answer at all, is a TypeError; a blank answer is a
    ValueError (it would make every response wrong).
    """
    answers: list[str] = []
    pending: list[Any] = [reference]
    while pending:  # depth-first, in order, without recursion (nesting depth is the caller's)
        item = pending.pop()
        if hasattr(item, "tolist") and not isinstance(item, str):  # numpy arrays and scalars
            item = item.tolist()
        if isinstance(item, str):
            if not item.strip():
                raise ValueError(f"a reference answer is blank in {reference!r:.200}")
            answers.append(item.strip())
        elif isinstance(item, bool):
            raise TypeError(
                f"a reference answer must be a str or a number, got the bool {item!r} in {reference!r:.200}"
            )
        elif isinstance(item, int):
            answers.append(str(item))
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"a reference answer must be a finite number, got {item!r} in {reference!r:.200}")
            answers.append(str(int(item)) if item.is_integer() else repr(item))
        elif isinstance(item, (list, tuple)):
            pending.extend(reversed(item))
        else:
            raise TypeError(
                f"a reference answer must be a str, a number or a list of them, got {type(item).__name__} "
                f"in {reference!r:.200}"
            )
    if not answers:
        raise TypeError(f"a reference answer must hold at least one answer, got {reference!r:.200}")
    return list(dict.fromkeys(answers))


def validate_timeout(timeout_s: float | str, name: str = "timeout_s") -> float:
    """``timeout_s`` as a float of seconds, or a ValueError naming ``name``: a time limit must be a
    positive finite number (0 would switch SIGALRM timers off, inf overflows them)."""
    try:
        value = float(timeout_s)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds, got {timeout_s!r}") from None
    if not 0 < value <= MAX_TIMEOUT_S:  # also refuses NaN
        raise ValueError(f"{name} must be > 0 and at most {MAX_TIMEOUT_S:g} seconds, got {timeout_s!r}")
    return value


class _Launcher:
    """Starts processes from one thread that lives as long as the interpreter.

    A worker asks the kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``), and "parent"
    there means the thread that started it: a worker started from a thread-pool thread would die
    with that thread. The main thread starts its own; other threads hand the start to this one.
    """

    def __init__(self) -> None:
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
    Thread-safe: several threads may call ``verdicts`` at once and share the workers.
    """

    def __init__(
        self, num_workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, memory_limit_mb: int | None = 4096
    ):
        if num_workers is None:
            num_workers = min(8, os.cpu_count() or 1)
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers = num_workers
        self.timeout_s = validate_timeout(timeout_s)
        self.memory_limit_mb = memory_limit_mb
        self._idle: list[_Worker] = []
        self._started = 0
        self._available = threading.Condition()
        self._closed = False

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
                    checked[i] = run_with_deadline(answer, refs, timeout_s)
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
                        worker.send({"answer": pairs[i][0], "references": pairs[i][1], "timeout_s": timeout_s})
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
