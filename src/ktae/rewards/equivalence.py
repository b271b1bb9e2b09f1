"""Mathematical answer equivalence through math-verify, every check under a time limit.

``check_answer`` is the comparison itself and has no time limit of its own: it only runs inside
``run_with_deadline`` (a SIGALRM timer in the main thread of the process that runs it). That
covers sympy's long Python loops, but not a long call inside C (a huge integer power), so
`ktae.rewards.checker_pool.AnswerChecker` by default runs the checks in worker processes and kills
any worker that overruns its task's hard deadline.

Only math-verify's LaTeX parser (ANTLR) reads model output: its plain-expression extractor goes
through ``sympy.parse_expr``, which ``eval``s, so it is not used.

``GRADERS`` names the rules a check can follow: ``"ktae"`` (``check_answer``, the default) and
``"math-verify"`` (stock math-verify as TRL calls it, `ktae.rewards.math_verify_grader`), which reads the
whole response instead of the extracted answer.
"""

from __future__ import annotations

import logging
import math
import re
import signal
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

from ktae.rewards import math_verify_grader
from ktae.safe_files import short_repr

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# One reference: an accepted answer (str or number), or a list, tuple or array of them, nested up to
# ``MAX_REFERENCE_DEPTH`` (see ``normalize_references``).
Reference: TypeAlias = "str | int | float | Sequence[Reference] | npt.NDArray[Any] | np.generic"

DEFAULT_TIMEOUT_S = 5.0
# The longest time limit a check may have (SIGALRM timers overflow far above it).
MAX_TIMEOUT_S = 86_400.0
# Numbers that math-verify finds equal (it rounds to 6 decimals) must also agree to this relative
# tolerance, or every answer near 1e-27 (Minerva) would equal every other, and 0.
NUMERIC_RELATIVE_TOLERANCE = 1e-4
# Lists nested in a reference, at most: accepted answers are a flat list (Minerva's nest one level more).
MAX_REFERENCE_DEPTH = 16


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
# Runs of superscript and subscript characters: x² is x^{2}, where compatibility folding alone gives x2.
_SCRIPT_RUN = re.compile("([\u2070\u00b9\u00b2\u00b3\u2074-\u207e\u2071\u207f]+)|([\u2080-\u208e]+)")
_NON_ASCII_DIGIT = re.compile(r"(?![0-9])\d")
# Vulgar fractions (½, ¾, ...) as \frac{n}{d}: 3½ is the mixed number 3\frac{1}{2}, where folding gives 31/2.
_VULGAR_FRACTIONS = {
    code: "\\frac{{{}}}{{{}}}".format(*unicodedata.normalize("NFKC", chr(code)).split("\u2044"))
    for code in (*range(0xBC, 0xBF), *range(0x2150, 0x215F), 0x2189)
}


@dataclass(frozen=True)
class Grader:
    """A rule that decides whether a prediction answers a problem: ``check(prediction, references)``.

    ``reads_response``: the prediction is the whole response (the grader extracts the answer itself),
    else the answer `ktae.rewards.extract_answer` took from it.
    """

    check: Callable[[str, Sequence[str]], bool]
    reads_response: bool
    load: Callable[[], None]  # imports and caches, built before a check's timer starts

    def prediction(self, response: str, answer: str | None) -> str | None:
        """What this grader checks of one response, given the answer extracted from it."""
        return response if self.reads_response else answer


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


def normalize_answer(text: str) -> str:
    """The text an answer (a prediction or a reference) is compared as, the same for both sides:

    - vulgar fractions as ``\\frac{n}{d}`` (3½ is the mixed number 3\\frac{1}{2});
    - superscript and subscript runs as ``^{...}`` and ``_{...}`` (x² is x^{2}, not x2);
    - Unicode compatibility forms folded (NFKC: a fullwidth 3, U+FF13, is 3), the fraction slash as ``/``;
    - invisible format characters removed (zero-width spaces, byte-order marks, soft hyphens, direction marks);
    - decimal digits of every script as ASCII digits.
    """
    if text.isascii():
        return text
    text = text.translate(_VULGAR_FRACTIONS)
    text = _SCRIPT_RUN.sub(lambda run: ("^{%s}" if run.group(1) else "_{%s}") % run.group(), text)
    text = unicodedata.normalize("NFKC", text).replace("\u2044", "/")
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return _NON_ASCII_DIGIT.sub(lambda digit: str(unicodedata.digit(digit.group())), text)


def check_answer(prediction: str | None, references: Sequence[str]) -> bool:
    """Whether ``prediction`` (an extracted answer) equals any of ``references``, both read through
    ``normalize_answer``.

    No time limit of its own: call it through ``run_with_deadline`` or an ``AnswerChecker``.
    """
    if prediction is None or not prediction.strip():
        return False
    prediction = normalize_answer(prediction)
    references = [normalize_answer(reference) for reference in references]
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


DEFAULT_GRADER = "ktae"
#: The answer checks by name (``ktae eval --grader``): ours, and stock math-verify as TRL calls it.
GRADERS: dict[str, Grader] = {
    "ktae": Grader(check=check_answer, reads_response=False, load=load_parser),
    "math-verify": Grader(
        check=math_verify_grader.check_response, reads_response=True, load=math_verify_grader.load_parser
    ),
}


def get_grader(name: str) -> Grader:
    """The grader called ``name``, or a ValueError listing the names."""
    if name not in GRADERS:
        raise ValueError(f"unknown grader {name!r}; choose one of {', '.join(GRADERS)}")
    return GRADERS[name]


def run_with_deadline(
    prediction: str | None, references: Sequence[str], timeout_s: float, grader: str = DEFAULT_GRADER
) -> Verdict:
    """The ``grader``'s check under a SIGALRM timer of ``timeout_s`` seconds; main thread only."""
    timeout_s = validate_timeout(timeout_s)
    rule = get_grader(grader)
    if threading.current_thread() is not threading.main_thread():
        raise ValueError(
            "in-process answer checking needs the main thread (it uses a SIGALRM timer); "
            "use AnswerChecker(num_workers>=1) from other threads"
        )
    if prediction is None or not prediction.strip():
        return Verdict(False, "no_answer")
    rule.load()

    def on_alarm(signum: int, frame: FrameType | None) -> NoReturn:
        raise CheckTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        try:
            # Re-fire every 50 ms: an alarm raised inside a weakref callback or __del__ is swallowed
            # by the interpreter, and the next one must still stop the check.
            signal.setitimer(signal.ITIMER_REAL, timeout_s, 0.05)
            return Verdict(rule.check(prediction, references))
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
    tuple of them nested at most ``MAX_REFERENCE_DEPTH`` deep (numpy arrays from parquet columns too),
    flattened; any of its answers is accepted. Anything else, or no answer at all, is a TypeError; a
    blank answer (nothing left after ``normalize_answer``) or deeper nesting is a ValueError (a blank
    one would make every response wrong).
    """
    answers: list[str] = []
    pending: list[tuple[Any, int]] = [(reference, 0)]  # (item, lists around it)
    while pending:  # depth-first, in order, without recursion
        item, depth = pending.pop()
        if hasattr(item, "tolist") and not isinstance(item, str):  # numpy arrays and scalars
            item = item.tolist()
        if isinstance(item, str):
            if not normalize_answer(item).strip():
                raise ValueError(f"a reference answer is blank in {short_repr(reference)}")
            answers.append(item.strip())
        elif isinstance(item, bool):
            raise TypeError(
                f"a reference answer must be a str or a number, got the bool {item!r} in {short_repr(reference)}"
            )
        elif isinstance(item, int):
            answers.append(str(item))
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"a reference answer must be a finite number, got {item!r} in {short_repr(reference)}")
            answers.append(str(int(item)) if item.is_integer() else repr(item))
        elif isinstance(item, (list, tuple)):
            if depth == MAX_REFERENCE_DEPTH:
                raise ValueError(
                    f"a reference nests lists more than {MAX_REFERENCE_DEPTH} deep: {short_repr(reference)}"
                )
            pending.extend((inner, depth + 1) for inner in reversed(item))
        else:
            raise TypeError(
                f"a reference answer must be a str, a number or a list of them, got {type(item).__name__} "
                f"in {short_repr(reference)}"
            )
    if not answers:
        raise TypeError(f"a reference answer must hold at least one answer, got {short_repr(reference)}")
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
