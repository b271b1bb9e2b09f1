"""Reading sampled rollouts for reports, and turning each into token ids plus readable text.

Every record is read into the trainers' own `ktae.run_folder.RolloutRecord`. Accepted records (JSONL, one
rollout per line), whichever trainer wrote them:
- the trainers' ``rollouts.jsonl`` (TRL: ``RUN_DIR/rollouts.jsonl``; verl: ``trainer.ktae_rollouts_dir``),
  one `ktae.run_folder.RolloutRecord` per line;
- verl's ``trainer.rollout_data_dir`` dumps (``DIR/<step>.jsonl``): input, output, score, step,
  text only and no group id, so rollouts of the same prompt text at a step form a group;
- any JSONL with a prompt, a response (text, ``tokens`` pieces and/or ``token_ids``), a score
  and, ideally, a group id.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ktae.models import ignored_token_ids, token_pieces
from ktae.reports.text import TEXT, detect_piece_style, merge_pieces, piece_label
from ktae.run_folder import ROLLOUTS_FILE, RolloutRecord, list_checkpoints, read_jsonl_numbered
from ktae.safe_files import short_repr

# Accepted names of each field, in order of preference: the `RolloutRecord` field first, then other tools' names.
PROMPT_KEYS = ("prompt", "input")
RESPONSE_KEYS = ("response", "output", "completion")
GROUP_KEYS = ("group", "uid", "group_id", "prompt_id")
SCORE_KEYS = ("score", "reward")
TOKEN_ID_KEYS = ("token_ids", "response_ids", "completion_ids")

# Without a tokenizer, text is split into words, runs of whitespace and single symbols.
_WORDS = re.compile(r"\s+|\w+|[^\w\s]")


@dataclasses.dataclass
class TokenizedRollouts:
    """Rollouts ready for the estimator and for display.

    token_ids[i]: int64 array [T_i]; texts[i]: one display string per token (they concatenate to
    the response text); labels: token id -> one-line label for tables; ignore_token_ids: the ids
    the estimator must give no value (pad, end of sequence); notices: what the reader should know
    about how the text was tokenized.
    """

    rollouts: list[RolloutRecord]
    token_ids: list[np.ndarray]
    texts: list[list[str]]
    labels: dict[int, str]
    ignore_token_ids: tuple[int, ...] = ()
    notices: list[str] = dataclasses.field(default_factory=list)


def _first(record: dict, keys: Sequence[str]):
    for key in keys:
        if key in record and record[key] is not None:
            return record[key]
    return None


def _as_text(value, what: str, where: str) -> str:
    """A prompt or response as text; chat messages ([{"role", "content"}]) become their contents."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        if len(value) == 1:
            return str(value[0]["content"])
        return "\n".join(f"{m.get('role', '?')}: {m['content']}" for m in value)
    raise TypeError(f"{where}: {what} must be text or chat messages, got {type(value).__name__}")


def parse_rollout(record: dict, where: str) -> RolloutRecord:
    """Validate one JSONL record and read it into a `RolloutRecord` (``where`` names it in errors).

    A score of null (no reward function scored the rollout) reads as None; such rollouts are left out later.
    """
    if not isinstance(record, dict):
        raise TypeError(f"{where}: expected a JSON object, got {type(record).__name__}")
    score = _first(record, SCORE_KEYS)
    if not (any(key in record for key in SCORE_KEYS) and score is None) and (
        isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)
    ):
        raise ValueError(f"{where}: needs a finite numeric 'score' (or 'reward'), got {short_repr(score)}")
    prompt = _first(record, PROMPT_KEYS)
    prompt = "" if prompt is None else _as_text(prompt, "prompt", where)
    response = _first(record, RESPONSE_KEYS)
    response = None if response is None else _as_text(response, "response", where)
    token_ids = _first(record, TOKEN_ID_KEYS)
    if token_ids is not None and (
        not isinstance(token_ids, list)
        or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**63 for t in token_ids)
    ):
        raise ValueError(f"{where}: 'token_ids' must be a list of non-negative ints below 2**63")
    tokens = record.get("tokens")
    if tokens is not None and (not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens)):
        raise ValueError(f"{where}: 'tokens' must be a list of strings (one piece per token)")
    if tokens is not None and token_ids is not None and len(tokens) != len(token_ids):
        raise ValueError(f"{where}: {len(tokens)} tokens but {len(token_ids)} token_ids")
    if response is None and tokens is None and token_ids is None:
        raise ValueError(f"{where}: no response: needs 'response' (or 'output'), 'tokens' or 'token_ids'")
    advantages = record.get("advantages")
    if advantages is not None:
        if not isinstance(advantages, list) or not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) for a in advantages
        ):
            raise ValueError(f"{where}: 'advantages' must be a list of numbers (one per token)")
        if token_ids is not None and len(advantages) != len(token_ids):
            raise ValueError(f"{where}: {len(advantages)} advantages but {len(token_ids)} token_ids")
    # verl's dumps (input/output records) carry no per-prompt id: v1's "uid" there names the single
    # rollout (<prompt uid>_<sample>_<output>), so the prompt text is the group.
    is_verl_dump = "input" in record and "output" in record and "group" not in record
    group = None if is_verl_dump else _first(record, GROUP_KEYS)
    if group is None:
        if not prompt:
            raise ValueError(f"{where}: needs a 'group' id (or a 'prompt' whose rollouts form the group)")
        group = prompt  # verl's dumps: the rollouts of one prompt are its group
    elif isinstance(group, (list, dict)):
        group = json.dumps(group, sort_keys=True)
    correct = record.get("correct")
    if correct is not None and not isinstance(correct, bool):
        raise ValueError(f"{where}: 'correct' must be true, false or null, got {short_repr(correct)}")
    step = record.get("step")
    if step is not None and (
        isinstance(step, bool)
        or not isinstance(step, (int, float))
        or (isinstance(step, float) and not step.is_integer())
    ):
        raise ValueError(f"{where}: 'step' must be a whole number, got {short_repr(step)}")
    return RolloutRecord(
        step=None if step is None else int(step),
        group=group,
        prompt=prompt,
        response=response,
        token_ids=token_ids,
        tokens=tokens,
        score=None if score is None else float(score),
        correct=correct,
        advantages=advantages,
    )


def rollout_files(path: str | os.PathLike) -> list[Path]:
    """The JSONL files behind ``path``: a file, a run folder (its rollouts.jsonl) or a folder of
    ``*.jsonl`` dumps (verl's ``rollout_data_dir``, one file per step, taken in step order)."""
    path = Path(path)
    if path.is_dir():
        if os.path.lexists(path / ROLLOUTS_FILE):
            return [path / ROLLOUTS_FILE]
        files = list(path.glob("*.jsonl"))
        if files:
            return sorted(files, key=lambda f: (0, int(f.stem), "") if f.stem.isdigit() else (1, 0, f.name))
        raise FileNotFoundError(f"no rollouts.jsonl or *.jsonl files in {path}")
    if os.path.lexists(path):
        return [path]  # read as a regular file (`load_rollouts`): anything else is refused by name
    raise FileNotFoundError(f"no rollouts file or folder at {path}")


def load_rollouts(path: str | os.PathLike, steps: Iterable[int] | None = None) -> list[RolloutRecord]:
    """Read rollouts from ``path`` (see ``rollout_files``), optionally only those of ``steps``.

    The files are read as the run folder's logs are (`ktae.run_folder.read_jsonl`): a torn last line
    (a run killed mid-write) is dropped, any other bad line is an error naming its file and line; a file
    that is not a regular file is refused by name, and so is a link, unless ``path`` names it directly."""
    wanted = None if steps is None else {int(s) for s in steps}
    rollouts = []
    for file in rollout_files(path):
        for line_number, record in read_jsonl_numbered(file, follow_links=file == Path(path)):
            rollout = parse_rollout(record, f"{file}:{line_number}")
            if wanted is None or rollout.step in wanted:
                rollouts.append(rollout)
    if not rollouts:
        raise ValueError(f"no rollouts in {path}" + ("" if wanted is None else f" at step(s) {sorted(wanted)}"))
    return rollouts


def find_run_tokenizer(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run that holds a tokenizer (``checkpoints/checkpoint-N``), if any."""
    with_tokenizer = [
        folder
        for folder in list_checkpoints(run_dir)
        if any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    ]
    return with_tokenizer[-1] if with_tokenizer else None


def _response_text(rollout: RolloutRecord, index: int) -> str:
    if rollout.response is None:
        raise ValueError(
            f"rollout {index} (group {short_repr(rollout.group)}) has no response: no text, tokens or token_ids"
        )
    return rollout.response


def tokenize_rollouts(
    rollouts: Sequence[RolloutRecord],
    tokenizer=None,
    ignore_token_ids: Iterable[int] | None = None,
) -> TokenizedRollouts:
    """Token ids and display text of every rollout.

    Display pieces: the record's ``tokens`` when present (the trainer's decoded pieces, or raw
    byte-level/SentencePiece pieces, which are merged into text); else the tokenizer's pieces of
    the record's ``token_ids``, or of its ``response`` tokenized. Without a tokenizer, text-only
    rollouts are split into words and symbols, and pieces without ids are numbered by their
    text; a notice says so. Rollouts without a score (null in the file; the trainer leaves them
    out of KTAE too) are left out, with a notice.

    ignore_token_ids: ids with no key-token value; default: the tokenizer's pad and
    end-of-sequence ids (none without a tokenizer).
    """
    unscored = sum(1 for r in rollouts if r.score is None)
    rollouts = [r for r in rollouts if r.score is not None]
    if not rollouts:
        raise ValueError("no scored rollouts to report on")
    notices = [f"{unscored} rollout(s) without a score were left out."] if unscored else []
    special = tuple(getattr(tokenizer, "all_special_tokens", ())) if tokenizer is not None else ()
    pieces: list[list[str]] = []
    ids: list[list[int] | None] = []
    from_tokenizer: list[bool] = []
    for index, rollout in enumerate(rollouts):
        token_ids = rollout.token_ids
        if rollout.tokens is not None:
            pieces.append(rollout.tokens)
        elif tokenizer is not None:
            if token_ids is None:
                token_ids = tokenizer(_response_text(rollout, index), add_special_tokens=False)["input_ids"]
            pieces.append(token_pieces(tokenizer, token_ids))  # decoded text, as the trainers log it
        elif token_ids is not None:
            raise ValueError(
                f"rollout {index} (group {short_repr(rollout.group)}) has token_ids but no 'tokens' pieces to show: "
                "pass a tokenizer (--tokenizer) to decode them"
            )
        else:
            pieces.append(_WORDS.findall(_response_text(rollout, index)))
        ids.append(None if token_ids is None else list(token_ids))
        from_tokenizer.append(rollout.tokens is None and tokenizer is not None)
    known_ids = [row for row in ids if row is not None]
    if len(known_ids) < len(ids):
        if not any(from_tokenizer) and all(r.token_ids is None and r.tokens is None for r in rollouts):
            notices.append(
                "No tokenizer was given and the rollouts carry text only: statistics are over words and "
                "symbols, not the model's tokens. Pass --tokenizer for token-level values."
            )
        else:
            notices.append("Some rollouts carry no token ids: tokens are identified by their text.")
        if ignore_token_ids:
            notices.append(f"Ignored token ids {sorted(ignore_token_ids)} do not apply to tokens numbered by text.")
        vocabulary: dict[str, int] = {}
        known_ids = [[vocabulary.setdefault(piece, len(vocabulary)) for piece in row] for row in pieces]
        ignore_token_ids = ()
    elif ignore_token_ids is None and tokenizer is not None:
        ignore_token_ids = ignored_token_ids(tokenizer)
    elif ignore_token_ids is None:
        ignore_token_ids = ()
        notices.append(
            "No tokenizer, so the pad and end-of-sequence ids are unknown and get values here as any token; "
            "training ignored them. Pass --tokenizer or --ignore-token-ids."
        )

    # Pieces decoded by the tokenizer are text; the pieces records carry may be raw byte-level or
    # SentencePiece pieces (other tools' logs), merged into text here.
    record_pieces = (piece for row, tok in zip(pieces, from_tokenizer) if not tok for piece in row)
    record_style = detect_piece_style(record_pieces, special)
    texts, labels = [], {}
    for row_ids, row_pieces, tok in zip(known_ids, pieces, from_tokenizer):
        style = TEXT if tok else record_style
        texts.append(merge_pieces(row_pieces, style, special))
        for token_id, piece in zip(row_ids, row_pieces):
            if token_id not in labels:
                labels[token_id] = piece_label(piece, style, special)
    return TokenizedRollouts(
        rollouts=list(rollouts),
        token_ids=[np.asarray(row, dtype=np.int64) for row in known_ids],
        texts=texts,
        labels=labels,
        ignore_token_ids=tuple(sorted({int(i) for i in ignore_token_ids})),
        notices=notices,
    )
