"""The run folder that ``ktae train`` fills: its file names, how each file is written, and who may write it.

Layout of ``RUN_DIR`` (training writes it; reports and evaluation read it)::

    config.yaml                 CONFIG_FILE      the run's options; ``--resume`` reads them (`read_config`)
    ktae_settings.json          KTAE_SETTINGS_FILE  the KTAE settings the run trained with, resolved (`KTAESettings`)
    metrics.jsonl               METRICS_FILE     one JSON object per logged step ({"step", <metric>: value})
    rollouts.jsonl              ROLLOUTS_FILE    one `RolloutRecord` per line
    key_tokens.jsonl            KEY_TOKENS_FILE  {"step", "credited": [...], "blamed": [...]} per logged step
    tb/                         TENSORBOARD_DIR  TensorBoard events
    checkpoints/checkpoint-N/   CHECKPOINTS_DIR  complete checkpoints only (published with one rename)
    warm_start/                 WARM_START_DIR   the policy RL started from
    merged/                     MERGED_DIR       a LoRA run's final adapter merged into its base (a full model)
    benchmarks/step-N/          BENCHMARKS_DIR   benchmark results during training (``ktae eval``'s layout)
    curves.png                  CURVES_FILE      training curves of metrics.jsonl
    .lock                       LOCK_FILE        held (flock) by the one process writing the folder
    .ktae_run                   RUN_MARKER_FILE  written first: ktae started this folder (`start_run_folder`)

Only a folder ktae started is written to: a new or empty one gets `RUN_MARKER_FILE` before anything
else, and a folder holding other files is refused, so what ``ktae train`` deletes or rewrites in it (a
half-written ``checkpoint-N``, the logs after the resumed step) is always its own. A run resumed from a
folder written before the marker existed is recognised by its ``config.yaml``.

The JSONL logs are appended one whole line per ``write``; a kill during an append can still leave a
torn last line, which `read_jsonl` (the one reader of these logs) and `drop_steps_after` drop (with a
warning) instead of failing.
Whole files (config, settings, reports, results) go through `write_atomic`.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import math
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ktae.core.config import KTAEConfig
from ktae.safe_files import (
    RefusedFile,
    file_kind,
    format_size,
    loads_json,
    open_regular,
    read_bytes,
    read_text,
    short_repr,
    shorten,
)

if TYPE_CHECKING:  # typing.Self is Python 3.11+
    from typing_extensions import Self

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
KTAE_SETTINGS_FILE = "ktae_settings.json"
METRICS_FILE = "metrics.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"
KEY_TOKENS_FILE = "key_tokens.jsonl"
TENSORBOARD_DIR = "tb"
CHECKPOINTS_DIR = "checkpoints"
WARM_START_DIR = "warm_start"
MERGED_DIR = "merged"
BENCHMARKS_DIR = "benchmarks"
CURVES_FILE = "curves.png"
LOCK_FILE = ".lock"
RUN_MARKER_FILE = ".ktae_run"
CHECKPOINT_PREFIX = "checkpoint-"

_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")

#: What TRL's GRPOTrainer adds to a group's reward standard deviation before dividing by it: TRL's own
#: group-scaled rollout-level advantage is KTAE's "grpo" base with this epsilon.
TRL_STD_EPSILON = 1e-4


@dataclasses.dataclass(kw_only=True)
class RolloutRecord:
    """One sampled response as a line of ``rollouts.jsonl``: both trainers write it (built by `from_tokens`),
    reports read it (`ktae.reports.rollouts.parse_rollout`).

    The trainers fill every field. T is the number of response tokens kept: padding and everything after
    the end of sequence are dropped, the end-of-sequence token itself is kept. Read from other tools' logs
    (verl's rollout dumps, any JSONL of rollouts), a record may lack the step, the token ids and pieces
    (text only), the verdict and the advantages: None.
    """

    step: int | None  # the optimizer step these rollouts trained (1-based)
    group: int | str  # id of the prompt group (rollouts of one prompt share it)
    prompt: str  # the prompt as text (chat messages joined as "role: content" lines)
    response: str | None = None  # == "".join(tokens)
    token_ids: list[int] | None = None  # [T] response token ids
    tokens: list[str] | None = None  # [T] display piece of each token
    score: float | None  # total reward; None when no reward function scored the rollout
    correct: bool | None = None  # score > the KTAE correct_threshold
    advantages: list[float] | None = None  # [T] per-token advantage the update used

    @classmethod
    def from_tokens(
        cls,
        tokenizer,
        *,
        step: int,
        group: int | str,
        prompt: str,
        token_ids: Sequence[int],
        score: float | None,
        correct_threshold: float,
        advantages: Sequence[float],
    ) -> RolloutRecord:
        """A trainer's record of one rollout: its kept response tokens decoded into pieces that concatenate to
        the response (`ktae.models.token_pieces`), a NaN score (no reward function scored it) as None, and
        the verdict from the KTAE threshold."""
        from ktae.models import token_pieces

        pieces = token_pieces(tokenizer, token_ids)
        if score is not None and math.isnan(score):
            score = None
        return cls(
            step=step,
            group=group,
            prompt=prompt,
            response="".join(pieces),
            token_ids=list(token_ids),
            tokens=pieces,
            score=score,
            correct=score is not None and score > correct_threshold,
            advantages=list(advantages),
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


#: Bytes of a recipe or ``config.yaml`` at most (a recipe is a few KB).
OPTIONS_FILE_LIMIT = 1 << 20
#: Bytes of ``ktae_settings.json`` at most.
SETTINGS_FILE_LIMIT = 1 << 20
#: Nesting of YAML options at most (a recipe's values are scalars and short lists).
OPTIONS_DEPTH_LIMIT = 32


class _OptionsLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing what options never need and an attacker can use: aliases (``*name``: a
    few lines that expand to billions of values wherever the value is used, in our own error messages
    too), a key given twice in one mapping (YAML would keep the last) and deep nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are refused: write the value out", mark)
        self._depth += 1
        try:
            if self._depth > OPTIONS_DEPTH_LIMIT:
                mark = self.peek_event().start_mark
                problem = f"nested deeper than {OPTIONS_DEPTH_LIMIT} levels: refused"
                raise yaml.composer.ComposerError(None, None, problem, mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: list[Any] = []
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                problem = f"key {short_repr(key)} given twice"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            seen.append(key)
        return super().construct_mapping(node, deep=deep)


def load_options_yaml(text: str, where: str) -> Any:
    """A YAML document of options (a recipe, a run's ``config.yaml``, a ``key=value`` value), read safely
    (`_OptionsLoader`: no aliases, no key twice, nesting and size bounded). Errors are a ValueError naming
    ``where`` and the line, never quoting more than a line's snippet of the input."""
    if len(text) > OPTIONS_FILE_LIMIT:
        raise ValueError(f"{where}: larger than {format_size(OPTIONS_FILE_LIMIT)}: refused")
    try:
        return yaml.load(text, Loader=_OptionsLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        place = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ValueError(f"{where}: {shorten(str(error.problem))}{place}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{where}: not valid YAML ({shorten(str(error))})") from None
    except ValueError as error:  # a constructor's: an int beyond Python's digit limit, a bad date
        raise ValueError(f"{where}: {shorten(str(error))}") from None


def read_options_file(path: str | os.PathLike, *, follow_links: bool = False) -> dict[str, Any]:
    """A YAML mapping of options (a recipe, or a run's ``config.yaml``): a regular file of at most
    `OPTIONS_FILE_LIMIT` bytes (``follow_links``: a link the user named; a run folder's own file is never
    one), read with `load_options_yaml`."""
    path = Path(path)
    loaded = load_options_yaml(read_text(path, OPTIONS_FILE_LIMIT, follow_links=follow_links), str(path))
    if loaded is not None and not isinstance(loaded, Mapping):
        raise ValueError(f"{path}: a recipe is a mapping of keys to values, got {type(loaded).__name__}")
    return dict(loaded or {})


def read_config(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The options of a run (``RUN_DIR/config.yaml``); None when the folder has none."""
    path = Path(run_dir) / CONFIG_FILE
    return read_options_file(path) if os.path.lexists(path) else None


def write_config(run_dir: str | os.PathLike, options: Mapping[str, Any]) -> Path:
    """Write the options of a run to ``RUN_DIR/config.yaml`` (atomically, in the given key order)."""
    return write_atomic(Path(run_dir) / CONFIG_FILE, yaml.safe_dump(dict(options), sort_keys=False))


@dataclasses.dataclass(frozen=True)
class KTAESettings:
    """The KTAE settings a run trained with, resolved: ``RUN_DIR/ktae_settings.json`` (the TRL trainer writes it
    when training starts, and the verl trainer beside its logged rollouts; reports recompute the run's
    key-token values and advantages with it).

    ``estimator``'s ``rollout_advantage`` and ``epsilon`` name the KTAE base equal to the rollout-level
    advantage the run trained with (TRL's own, when KTAE did not compute it); ``ignore_token_ids`` are the
    ids the tokenizer gave.
    """

    ktae: bool  # the update added KTAE's key-token bonus (False: the rollout-level advantage alone)
    estimator: KTAEConfig
    rollout_advantage: str  # who computed the rollout-level advantage, and how, in words
    exact_base: bool  # False: no KTAE base equals it, and ``estimator`` names the nearest

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "estimator": self.estimator.to_dict()}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = KTAE_SETTINGS_FILE) -> KTAESettings:
        """Read a record `to_json` wrote; anything else is a ValueError naming ``where``."""
        record = loads_json(text, where)
        try:
            return cls(**{**record, "estimator": KTAEConfig.from_dict(record["estimator"])})
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: not a KTAE settings record ({shorten(str(error))})") from None


def write_ktae_settings(run_dir: str | os.PathLike, settings: KTAESettings) -> Path:
    return write_atomic(Path(run_dir) / KTAE_SETTINGS_FILE, settings.to_json())


def read_ktae_settings(run_dir: str | os.PathLike) -> KTAESettings | None:
    """The KTAE settings of a run; for a run folder written before ``ktae_settings.json`` existed, worked out
    from its ``config.yaml`` (`legacy_ktae_settings`). None when the folder has neither."""
    path = Path(run_dir) / KTAE_SETTINGS_FILE
    if os.path.lexists(path):
        return KTAESettings.from_json(read_text(path, SETTINGS_FILE_LIMIT), str(path))
    config = read_config(run_dir)
    return None if config is None else legacy_ktae_settings(config, Path(run_dir) / CONFIG_FILE)


def legacy_ktae_settings(config: Mapping[str, Any], where: str | os.PathLike) -> KTAESettings:
    """KTAE settings from a run's options alone: the TRL trainer's flat ``ktae_*`` keys, or a ``ktae``
    mapping at the top or under ``algorithm`` (verl's ``algorithm.ktae``, whose ``base`` is verl's own)."""
    fields = {f.name for f in dataclasses.fields(KTAEConfig)}
    algorithm = config.get("algorithm")
    section = algorithm.get("ktae") if isinstance(algorithm, dict) and "ktae" in algorithm else config.get("ktae")
    if isinstance(section, dict):
        options = {key: value for key, value in section.items() if key != "base"}
        description = f"KTAE's {options.get('rollout_advantage') or KTAEConfig.rollout_advantage}"
    else:
        options = {key[5:]: value for key, value in config.items() if key.startswith("ktae_") and key[5:] in fields}
        if options.get("rollout_advantage") is None:  # the bonus was added to TRL's own rollout-level advantage
            if options.get("epsilon") is None:
                options["epsilon"] = TRL_STD_EPSILON
            description = f"TRL's own (scale_rewards={config.get('scale_rewards', 'group')})"
        else:
            description = f"KTAE's {options['rollout_advantage']}"
    options = {key: value for key, value in options.items() if value is not None}
    try:
        estimator = KTAEConfig.from_dict(options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None
    return KTAESettings(ktae=section is not False, estimator=estimator, rollout_advantage=description, exact_base=True)


def write_atomic(path: str | os.PathLike, content: str | bytes) -> Path:
    """Write a file through a temp file and ``os.replace``, so readers never see half of it.

    The file gets the usual permissions (``0o666`` less the umask), not the temp file's private ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.chmod(temp_name, 0o666 & ~_umask())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def append_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any] | RolloutRecord]) -> None:
    """Append records as JSON lines with one ``write`` (a kill leaves at most one torn line at the end).

    The log must be a regular file of its own: a link (to a file elsewhere, or to a device) is refused."""
    lines = "".join((r.to_json() if isinstance(r, RolloutRecord) else json.dumps(r)) + "\n" for r in records)
    if not lines:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_regular(path, append=True) as handle:
        handle.write(lines.encode("utf-8"))


def is_metric_value(value: Any) -> bool:
    """Whether a `METRICS_FILE` value is a number to plot or average: finite, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_jsonl(path: str | os.PathLike, *, follow_links: bool = False) -> list[dict[str, Any]]:
    """The records of a JSONL log of this folder, dropping a torn last line (with a warning).

    Torn: the file's last line, not valid JSON and without its newline. Any other line that is not a
    JSON object is damage, not a torn append: ValueError naming the file and line. The log must be a
    regular file (a FIFO, a device or, unless ``follow_links``, a link is refused by name); it is read
    line by line, its records held in memory.
    """
    return [record for _, record in read_jsonl_numbered(path, follow_links=follow_links)]


def read_jsonl_numbered(path: str | os.PathLike, *, follow_links: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """`read_jsonl` with the line number of each record, for readers that name the line of a record
    they refuse."""
    path = Path(path)
    records = []
    with open_regular(path, follow_links=follow_links) as handle:
        # Binary lines end at b"\n" only: records may hold other line separators (U+2028, form feed) in their text.
        for number, raw in enumerate(handle, 1):
            whole = raw.endswith(b"\n")  # every append ends with its newline; only a torn last line lacks it
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                record = json.loads(line)
            except (ValueError, RecursionError) as error:  # not UTF-8, not JSON, nested too deep, an int too long
                if not whole:
                    logger.warning("%s: dropped a torn last line (%d bytes, cut off mid-write)", path, len(raw))
                    break
                raise ValueError(f"{path}:{number}: not valid JSON ({_json_line_problem(error)})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            records.append((number, record))
    return records


def _json_line_problem(error: ValueError | RecursionError) -> str:
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 text: {error.reason}"
    if isinstance(error, json.JSONDecodeError):
        return error.msg
    return "nested too deeply" if isinstance(error, RecursionError) else shorten(str(error))


def drop_steps_after(path: str | os.PathLike, step: int) -> None:
    """Keep only the records of a JSONL log with ``"step" <= step`` (atomically); no-op if the file is absent.

    Run on resume: the resumed run writes the later steps again. A torn last line is dropped too.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    kept = []
    for number, record in read_jsonl_numbered(path):
        if not is_metric_value(record.get("step")):
            raise ValueError(f"{path}:{number}: expected a record with a numeric 'step'")
        if record["step"] <= step:
            kept.append(record)
    write_atomic(path, "".join(json.dumps(record) + "\n" for record in kept))


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """N of a ``checkpoint-N`` folder name, None for any other name."""
    match = _CHECKPOINT_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints of a run folder (``checkpoints/checkpoint-N``), oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir() if p.is_dir() and (step := checkpoint_step(p)) is not None]
    return [p for _, p in sorted(found)]


#: Bytes of a checkpoint's JSON file at most (``trainer_state.json`` grows with the run's log history).
CHECKPOINT_JSON_LIMIT = 256 << 20
TRAINER_STATE_FILE = "trainer_state.json"  # transformers' name
_SHARDED_WEIGHTS = ("pytorch_model_fsdp", "global_step")  # folders of FSDP's and DeepSpeed's sharded states


def read_trainer_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The trainer state of a checkpoint (``trainer_state.json``), with an integer ``global_step``; errors name
    the file."""
    path = Path(checkpoint) / TRAINER_STATE_FILE
    state = loads_json(read_bytes(path, CHECKPOINT_JSON_LIMIT), str(path))
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        raise ValueError(f"{path}: not a trainer state (no integer global_step)")
    return state


def checkpoint_damage(checkpoint: str | os.PathLike) -> str | None:
    """Why a checkpoint cannot be resumed from, in words naming the file; None when it looks whole.

    Checked cheaply, by what loading it reads first, not by loading it: ``trainer_state.json`` and every other
    JSON file parse; model weights are there (``model.safetensors``, its shards, a PEFT adapter, or the
    folders FSDP and DeepSpeed shard them into) and each
    safetensors file's header covers the file exactly (a truncated file fails); each torch file
    (``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``, ``training_args.bin``) ends with its zip directory.
    Every file must be a regular file.
    """
    folder = Path(checkpoint)
    try:
        entries = list(folder.iterdir())
    except OSError as error:
        return str(error)
    files = {entry.name: entry for entry in entries if not entry.is_dir() or entry.is_symlink()}
    if TRAINER_STATE_FILE not in files:
        return f"{TRAINER_STATE_FILE} is missing"
    if not any(entry.name.endswith(".safetensors") or entry.name.startswith(_SHARDED_WEIGHTS) for entry in entries):
        return "it holds no model weights (model.safetensors)"
    for path in sorted(files.values()):
        damage = _checkpoint_file_damage(path, files)
        if damage is not None:
            return damage
    return None


def _checkpoint_file_damage(path: Path, files: Mapping[str, Path]) -> str | None:
    import zipfile

    from safetensors import SafetensorError, safe_open

    name = path.name
    try:
        if name == TRAINER_STATE_FILE:
            read_trainer_state(path.parent)
        elif name.endswith(".json"):
            record = loads_json(read_bytes(path, CHECKPOINT_JSON_LIMIT), name)
            if name.endswith(".safetensors.index.json"):
                shards = record.get("weight_map", {}).values() if isinstance(record, dict) else ()
                missing = sorted(set(shards) - set(files))
                if missing:
                    return f"{name} names the shard {short_repr(missing[0])}, which is missing"
        elif name.endswith(".safetensors"):
            open_regular(path).close()
            with safe_open(str(path), "numpy"):  # the header only; no tensor is read
                pass
        elif name.endswith((".pt", ".pth", ".bin")):
            with open_regular(path) as handle, zipfile.ZipFile(handle):
                pass
    except (zipfile.BadZipFile, SafetensorError) as error:
        return f"{name}: {shorten(str(error))}"
    except (OSError, ValueError) as error:  # ours name the file already, and are short
        return str(error)
    return None


def newest_usable_checkpoint(run_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint a run can resume from, and the newer ones skipped with why
    (`checkpoint_damage`). The skipped ones are left as they are."""
    skipped: list[tuple[Path, str]] = []
    for checkpoint in reversed(list_checkpoints(run_dir)):
        damage = checkpoint_damage(checkpoint)
        if damage is None:
            return checkpoint, skipped
        skipped.append((checkpoint, damage))
    return None, skipped


def move_aside(path: str | os.PathLike, suffix: str) -> Path:
    """Rename ``path`` to the first free ``path + suffix``, ``path + suffix-2``...: kept, out of the way."""
    path = Path(path)
    aside, count = path.with_name(path.name + suffix), 1
    while os.path.lexists(aside):
        count += 1
        aside = path.with_name(f"{path.name}{suffix}-{count}")
    os.rename(path, aside)
    return aside


def unpublished_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """``RUN_DIR/checkpoint-N`` folders: the trainer writes there first, so they may be incomplete."""
    return [p for p in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*") if checkpoint_step(p) is not None]


#: The files of the layout that are read, or appended to in place: each must be a regular file.
_RUN_FILES = (CONFIG_FILE, KTAE_SETTINGS_FILE, METRICS_FILE, ROLLOUTS_FILE, KEY_TOKENS_FILE, RUN_MARKER_FILE)
#: The folders of the layout the run deletes in: each must be a folder of this one, not a link to another.
_RUN_DIRS = (CHECKPOINTS_DIR, WARM_START_DIR, TENSORBOARD_DIR)


def is_run_folder(run_dir: str | os.PathLike) -> bool:
    """Whether ktae started this folder: it holds `RUN_MARKER_FILE` (or, written before the marker, a
    ``config.yaml``)."""
    return any(os.path.lexists(Path(run_dir) / name) for name in (RUN_MARKER_FILE, CONFIG_FILE))


def check_run_files(run_dir: str | os.PathLike) -> None:
    """Refuse, by name, a file of the layout that is not a regular file (a link, a FIFO, a device) and a
    folder of the layout that is a link, before any work starts; the readers check each file again as
    they open it (`ktae.safe_files.open_regular`)."""
    run_dir = Path(run_dir)
    for name in (*_RUN_FILES, *_RUN_DIRS):
        path = run_dir / name
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        wanted = stat.S_ISDIR if name in _RUN_DIRS else stat.S_ISREG
        if not wanted(mode):
            what = "a folder" if name in _RUN_DIRS else "a regular file"
            raise RefusedFile(f"{path} is {file_kind(mode)}, not {what}: refused")


def start_run_folder(run_dir: str | os.PathLike) -> RunFolderLock:
    """Claim a folder for a new run and return its held lock.

    The folder is new, empty, or one a start that failed left (it has `RUN_MARKER_FILE` and no
    ``config.yaml``); anything else is refused before a file is created in it: a folder that holds a
    run (continue it with ``--resume``), and a folder holding files ktae did not write.
    """
    run_dir = Path(run_dir)
    if os.path.lexists(run_dir):
        if not run_dir.is_dir():
            raise ValueError(f"{run_dir} is not a folder: pick a new or empty folder for the run")
        _refuse_started_or_foreign(run_dir)  # a lone .lock: another ktae starting here, which the lock tells
    lock = RunFolderLock(run_dir).acquire()
    try:
        _refuse_started_or_foreign(run_dir)  # again, now that no other ktae can write it
        check_run_files(run_dir)
        if not os.path.lexists(run_dir / RUN_MARKER_FILE):
            write_atomic(run_dir / RUN_MARKER_FILE, "A run folder of ktae train: it writes and deletes files here.\n")
    except BaseException:
        lock.release()
        raise
    return lock


def _refuse_started_or_foreign(run_dir: Path) -> None:
    if os.path.lexists(run_dir / CONFIG_FILE):
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another folder")
    if os.path.lexists(run_dir / RUN_MARKER_FILE):
        return  # a start that failed before config.yaml: ours to start again
    foreign = sorted(name for name in os.listdir(run_dir) if name != LOCK_FILE)
    if foreign:
        shown = ", ".join(short_repr(name) for name in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ValueError(
            f"{run_dir} holds files ktae did not write ({shown}): pick a new or empty folder for the run "
            "(ktae train deletes and rewrites files only in a folder it started)"
        )


def open_run_folder(run_dir: str | os.PathLike) -> RunFolderLock:
    """Claim a run's folder to continue it (``--resume``) and return its held lock: it must hold the run's
    ``config.yaml``, and its files must be regular files (`check_run_files`)."""
    run_dir = Path(run_dir)
    if not os.path.lexists(run_dir / CONFIG_FILE):
        raise ValueError(f"{run_dir} is not a run folder: it has no {CONFIG_FILE}")
    lock = RunFolderLock(run_dir).acquire()
    try:
        check_run_files(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


class RunFolderInUse(RuntimeError):
    """Another process holds the run folder's lock."""


class RunFolderLock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock``, which holds the owner's pid.

    The kernel drops the lock when the process ends, however it ends, so a crashed run leaves no
    stale lock; the file itself stays and is reused. The file is opened without following a link and
    without truncating it, and refused unless it is a regular file of its own (one link): the pid is
    written only once the lock is held, so a ``.lock`` that is a link to (or another name of) a file
    elsewhere is never written to.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self._descriptor: int | None = None

    def acquire(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            descriptor = os.open(self.path, flags, 0o666)
        except OSError as error:
            kind = {errno.ELOOP: "a symbolic link", errno.EISDIR: "a folder"}.get(error.errno or 0)
            if kind is not None:
                raise ValueError(f"{self.path} is {kind}, not a regular file: refused") from None
            raise
        try:
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode):
                raise ValueError(f"{self.path} is {file_kind(status.st_mode)}, not a regular file: refused")
            if status.st_nlink != 1:
                raise ValueError(f"{self.path} has {status.st_nlink} names (a hard link to another file): refused")
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "unknown"
                    raise RunFolderInUse(
                        f"{self.path.parent} is being written by another process (pid {holder})"
                    ) from None
                raise
            os.ftruncate(descriptor, 0)  # ours now: the lock is held
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(descriptor)
            raise
        self._descriptor = descriptor
        return self

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the descriptor releases the flock
            self._descriptor = None

    def __enter__(self) -> Self:
        # A lock `start_run_folder`/`open_run_folder` returned is held already: ``with`` then only releases it.
        return self if self._descriptor is not None else self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
