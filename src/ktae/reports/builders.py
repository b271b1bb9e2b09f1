"""Report builders: a key-token page over rollouts, and a run's overview across steps.

``build_report`` turns rollouts (a JSONL file, verl's dump folder or a run folder) into one
self-contained HTML page. ``build_run_report`` turns one or more run folders (``ktae train``'s
layout, docs/reports.md) into a folder: ``index.html`` (training curves, key tokens over steps,
one row per logged step) and one key-token page per step.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ktae import KTAEConfig
from ktae.reports.curves import default_labels, plot_panels, plot_runs
from ktae.reports.files import run_folders
from ktae.reports.html import page, render_key_token_report
from ktae.reports.keytokens import STRONG_VALUE, KeyTokenAnalysis, analyse
from ktae.reports.rollouts import (
    TokenizedRollouts,
    find_run_tokenizer,
    load_rollouts,
    tokenize_rollouts,
)
from ktae.run_folder import METRICS_FILE, ROLLOUTS_FILE, RolloutRecord, read_ktae_settings, write_atomic

STEP_TOP_COUNT = 5  # tokens per step in the run overview's table


def run_ktae_config(run_dir: str | os.PathLike) -> tuple[KTAEConfig | None, list[str]]:
    """The KTAE options a run trained with (`ktae.run_folder.read_ktae_settings`), and notes for the reader.

    Returns (None, []) when the run folder has neither ``ktae_settings.json`` nor ``config.yaml``.
    """
    settings = read_ktae_settings(run_dir)
    if settings is None:
        return None, []
    notes = []
    if not settings.ktae:
        notes.append("This run trained without KTAE; the colours show what KTAE would have credited and blamed.")
    if not settings.exact_base:
        notes.append(
            f"No KTAE base equals this run's rollout-level advantage ({settings.rollout_advantage}): the rollout "
            f"advantages shown are KTAE's {settings.estimator.rollout_advantage}."
        )
    return settings.estimator, notes


def _tokenizer(tokenizer, run_dir: Path | None):
    """A tokenizer object from an object, a path or hub id, or the run's newest checkpoint.

    Loaded as training and evaluation load it (`ktae.models.load_tokenizer`), so that a report splits
    and labels the run's tokens exactly as the run did.
    """
    from ktae.models import load_tokenizer

    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    found = find_run_tokenizer(run_dir) if run_dir is not None else None
    return load_tokenizer(found) if found is not None else None


def _subset(data: TokenizedRollouts, indices: Sequence[int]) -> TokenizedRollouts:
    return dataclasses.replace(
        data,
        rollouts=[data.rollouts[i] for i in indices],
        token_ids=[data.token_ids[i] for i in indices],
        texts=[data.texts[i] for i in indices],
    )


def _resolve_config(config, run_dir: Path | None) -> tuple[KTAEConfig, list[str]]:
    """A KTAEConfig is used as given; None or a mapping of overrides starts from the run's own."""
    if isinstance(config, KTAEConfig):
        return config, []
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config must be a KTAEConfig or a mapping of KTAE options, got {type(config).__name__}")
    base, notes = run_ktae_config(run_dir) if run_dir is not None else (None, [])
    base = base or KTAEConfig()
    return (KTAEConfig.from_dict({**base.to_dict(), **config}) if config else base), notes


def _prepare(
    source: str | os.PathLike | Iterable[RolloutRecord],
    tokenizer,
    options: KTAEConfig | Mapping | None,
    steps: Iterable[int] | None,
    ignore_token_ids: Iterable[int] | None,
) -> tuple[TokenizedRollouts, KTAEConfig, list[str]]:
    """(tokenized rollouts, config, notices) for a file/folder/records ``source``."""
    run_dir = Path(source) if isinstance(source, (str, os.PathLike)) and Path(source).is_dir() else None
    config, notices = _resolve_config(options, run_dir)
    if isinstance(source, (str, os.PathLike)):
        rollouts = load_rollouts(source, steps)
    else:
        wanted = None if steps is None else set(steps)
        rollouts = [r for r in source if wanted is None or r.step in wanted]
        if not rollouts:
            raise ValueError("no rollouts to report on")
        if not all(isinstance(r, RolloutRecord) for r in rollouts):
            raise TypeError("rollouts must be ktae.run_folder.RolloutRecord objects (see ktae.reports.parse_rollout)")
    if ignore_token_ids is None and config.ignore_token_ids:
        ignore_token_ids = config.ignore_token_ids  # the run's own list (analyse adds the config's anyway)
    data = tokenize_rollouts(rollouts, _tokenizer(tokenizer, run_dir), ignore_token_ids)
    return data, config, notices + data.notices


def build_report(
    source: str | os.PathLike | Iterable[RolloutRecord],
    out_html: str | os.PathLike,
    *,
    tokenizer=None,
    config: KTAEConfig | Mapping | None = None,
    steps: Iterable[int] | None = None,
    ignore_token_ids: Iterable[int] | None = None,
    title: str | None = None,
    strong: float = STRONG_VALUE,
) -> Path:
    """Write a self-contained HTML key-token report of rollouts; returns its path.

    source: a rollouts JSONL file, a folder of JSONL dumps (verl's ``rollout_data_dir``), a run
        folder (its rollouts.jsonl, KTAE settings and newest checkpoint's tokenizer), or `RolloutRecord` objects.
    tokenizer: a Hugging Face tokenizer, or its path or hub id; needed for text-only rollouts
        (otherwise they are split into words) and to decode byte-level token ids.
    config: KTAEConfig of the statistics, or a mapping of options over the default (the run's own
        settings for a run folder, else KTAEConfig()).
    steps: only the rollouts of these steps. ignore_token_ids: ids with no value (default: the
        tokenizer's pad and end-of-sequence ids). strong: |v| threshold of the "strongly weighted" share.
    """
    data, ktae_config, notices = _prepare(source, tokenizer, config, steps, ignore_token_ids)
    analysis = analyse(data, ktae_config)
    subtitle = str(source) if isinstance(source, (str, os.PathLike)) else "rollouts"
    steps_seen = sorted({r.step for r in data.rollouts if r.step is not None})
    if steps_seen:
        subtitle += f" \u00b7 step{'s' if len(steps_seen) > 1 else ''} {', '.join(map(str, steps_seen))}"
    document = render_key_token_report(analysis, title or "KTAE key-token report", subtitle, notices, strong)
    return write_atomic(out_html, document)


@dataclasses.dataclass
class StepSummary:
    """What one logged step's rollouts show: counts, strongly weighted shares and top tokens."""

    step: int | None
    groups: int
    rollouts: int
    accuracy: float
    shares: dict[str, float]
    top: dict[str, list[dict]]
    page: str


def _summarise(step, analysis: KeyTokenAnalysis, page_name: str, strong: float) -> StepSummary:
    return StepSummary(
        step=step,
        groups=len(analysis.group_keys),
        rollouts=len(analysis.data.rollouts),
        accuracy=float(analysis.correct.mean()),
        shares=analysis.strong_shares(strong),
        top=analysis.top_tokens(STEP_TOP_COUNT),
        page=page_name,
    )


def _png_img(path: Path, alt: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="curves" alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _steps_table(summaries: list[StepSummary], prefix: str, strong: float) -> str:
    def tokens(entries):
        return " ".join(f'<span class="tok">{html.escape(e["label"])}</span>' for e in entries) or "\u2013"

    rows = "".join(
        f'<tr><td><a href="{html.escape(urllib.parse.quote(prefix + s.page))}">'
        f"{'all' if s.step is None else s.step}</a></td>"
        f'<td class="num">{s.groups}</td><td class="num">{s.rollouts}</td><td class="num">{100 * s.accuracy:.0f}%</td>'
        f'<td class="num">{100 * s.shares["strong"]:.1f}%</td><td class="num">{100 * s.shares["credited"]:.1f}%</td>'
        f'<td class="num">{100 * s.shares["blamed"]:.1f}%</td><td>{tokens(s.top["credited"])}</td>'
        f"<td>{tokens(s.top['blamed'])}</td></tr>"
        for s in summaries
    )
    return (
        f"<table><tr><th>step</th><th>groups</th><th>rollouts</th><th>correct</th><th>|v| &gt; {strong:g}</th>"
        f"<th>v &gt; {strong:g}</th><th>v &lt; \u2212{strong:g}</th><th>most credited</th><th>most blamed</th></tr>"
        f"{rows}</table>"
    )


_UNSAFE_IN_NAMES = re.compile(r"[^A-Za-z0-9._+-]")


def page_folders(labels: Sequence[str]) -> list[str]:
    """One folder name per run label, for its step pages: the label with anything but letters, digits and
    ``._+-`` replaced by ``_`` and no leading dot, so that a label never leads outside the report folder
    (``..``, ``/``) or hides its folder; a name taken already gets ``-2``, ``-3``..."""
    names: list[str] = []
    for label in labels:
        base = _UNSAFE_IN_NAMES.sub("_", label).lstrip(".")[:100] or "run"
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names.append(name)
    return names


def build_run_report(
    run_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    tokenizer=None,
    config: KTAEConfig | Mapping | None = None,
    steps: Iterable[int] | None = None,
    ignore_token_ids: Iterable[int] | None = None,
    metrics: Sequence[str] | None = None,
    strong: float = STRONG_VALUE,
) -> Path:
    """Write the report of one or more training runs into ``out_dir``; returns its index.html.

    Per run: a key-token page per logged step of rollouts.jsonl (``step-N.html``, in a folder
    per run when there are several). On the index: the training curves of all runs on one plot
    (curves.png), the share of strongly weighted tokens over steps (key-tokens.png), and a table
    of the steps with their most credited and blamed tokens. Options as in ``build_report``;
    tokenizer and config default to each run's own.
    """
    run_dirs = run_folders(run_dirs, "build_run_report")
    for path in run_dirs:
        if not path.is_dir():
            raise FileNotFoundError(f"no run folder at {path}")
    labels = list(labels) if labels is not None else default_labels(run_dirs)
    if len(labels) != len(run_dirs) or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be {len(run_dirs)} distinct names, one per run, got {labels}")
    out_dir = Path(out_dir)
    wanted = None if steps is None else sorted({int(s) for s in steps})

    share_lines: dict[str, dict] = {
        f"% tokens with |v| > {strong:g}": {},
        f"% with v > {strong:g} (credited)": {},
        f"% with v < \u2212{strong:g} (blamed)": {},
    }
    sections = []
    folders = page_folders(labels) if len(run_dirs) > 1 else [""] * len(run_dirs)
    for label, run_dir, folder in zip(labels, run_dirs, folders):
        prefix = f"{folder}/" if folder else ""
        notes: list[str] = []
        summaries: list[StepSummary] = []
        if os.path.lexists(run_dir / ROLLOUTS_FILE):  # a link or a FIFO there is refused by name, not skipped
            data, run_config, notes = _prepare(run_dir, tokenizer, config, None, ignore_token_ids)
            by_step: dict = {}
            for index, rollout in enumerate(data.rollouts):
                if wanted is None or rollout.step in wanted:
                    by_step.setdefault(rollout.step, []).append(index)
            if wanted is not None and not by_step:
                notes = [*notes, f"No rollouts at step(s) {', '.join(map(str, wanted))} in this run."]
            for step in sorted(by_step, key=lambda s: (s is None, s or 0)):
                analysis = analyse(_subset(data, by_step[step]), run_config)
                page_name = f"step-{'all' if step is None else step}.html"
                title = f"{label} \u00b7 step {'(none)' if step is None else step}"
                document = render_key_token_report(analysis, title, str(run_dir), notes, strong)
                write_atomic(out_dir / prefix / page_name, document)
                summaries.append(_summarise(step, analysis, page_name, strong))
        else:
            notes = [f"No rollouts.jsonl in {run_dir}: no key-token pages for this run."]
        points = [(s.step, s.shares) for s in summaries if s.step is not None]
        for lines, key in zip(share_lines.values(), ("strong", "credited", "blamed")):
            lines[label] = [(step, 100 * shares[key]) for step, shares in points]
        sections.append(
            f'<h2>{html.escape(label)}</h2><p class="sub">{html.escape(str(run_dir))}</p>'
            + "".join(f'<p class="notice">{html.escape(n)}</p>' for n in notes)
            + (_steps_table(summaries, prefix, strong) if summaries else "")
        )

    body = ["<h1>KTAE run report</h1>", f'<p class="sub">{html.escape(", ".join(labels))}</p>']
    with_metrics = [(label, path) for label, path in zip(labels, run_dirs) if os.path.lexists(path / METRICS_FILE)]
    if with_metrics:
        curves = plot_runs(
            [p for _, p in with_metrics], out_dir / "curves.png", metrics, [label for label, _ in with_metrics]
        )
        body += ["<h2>Training curves</h2>", _png_img(curves, "training curves")]
    else:
        body.append('<p class="notice">No metrics.jsonl in the run folder(s): no training curves.</p>')
    if any(points for lines in share_lines.values() for points in lines.values()):
        shares_png = plot_panels(share_lines, out_dir / "key-tokens.png", ylim=(0, None))
        body += [
            f"<h2>Strongly weighted tokens over steps</h2>"
            f'<p class="sub">Share of response tokens whose key-token value exceeds {strong:g} in size, '
            f"recomputed from the logged rollouts; top {STEP_TOP_COUNT} tokens by total value in the tables.</p>",
            _png_img(shares_png, "key tokens over steps"),
        ]
    body += sections
    return write_atomic(out_dir / "index.html", page("KTAE run report", "\n".join(body)))
