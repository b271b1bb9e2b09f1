"""Final-answer extraction from model responses.

A response's answer is the content of its last ``<answer>...</answer>`` block (or of the last
``\\boxed{...}`` inside that block), else the content of its last complete ``\\boxed{...}`` or
``\\fbox{...}`` (nested braces allowed), else the token after ``\\boxed `` (``\\boxed 5``).
``None`` means "no answer"; extraction never raises on any string and runs in linear time, so an
enormous or malformed response costs no more than reading it once.
"""

from __future__ import annotations

import re

# \boxed / \fbox followed by optional spaces and an opening brace, or by spaces and a bare token.
_BOX_MARKER = re.compile(r"\\(?:boxed|fbox)\s*(\{)|\\boxed\s+([^\s${}]+)")
# A backslash escapes the next character (so \\{ and \\} are not structural); otherwise a brace.
_BRACE_OR_ESCAPE = re.compile(r"\\[\s\S]|[{}]")


def _matching_braces(text: str, start: int) -> dict[int, int]:
    """Index of each structural ``{`` at or after ``start`` -> index of its ``}``, in one pass."""
    matches: dict[int, int] = {}
    stack: list[int] = []
    for token in _BRACE_OR_ESCAPE.finditer(text, start):
        ch = token.group()
        if ch == "{":
            stack.append(token.start())
        elif ch == "}" and stack:
            matches[stack.pop()] = token.start()
    return matches


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}``/``\\fbox{...}`` (or ``\\boxed token``) in ``text``.

    An unclosed ``\\boxed{`` (a truncated response) is skipped in favour of an earlier complete one.
    Returns ``None`` when there is none or its content is blank.
    """
    markers = list(_BOX_MARKER.finditer(text))
    if not markers:
        return None
    braces = _matching_braces(text, markers[0].start())
    for marker in reversed(markers):
        if marker.group(2) is not None:  # "\boxed 5"
            content = marker.group(2)
        else:
            open_at = marker.start(1)
            close_at = braces.get(open_at)
            if close_at is None:
                continue
            content = text[open_at + 1 : close_at]
        content = content.strip()
        return content or None
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a response, or ``None`` when it has none (see the module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects a str, got {type(text).__name__}")
    close_at = text.rfind("</answer>")
    open_at = text.rfind("<answer>", 0, close_at) if close_at >= 0 else -1
    if open_at >= 0:
        inner = text[open_at + len("<answer>") : close_at]
        boxed = extract_boxed(inner)
        if boxed is not None:
            return boxed
        inner = inner.strip()
        return inner or None
    return extract_boxed(text)
