"""Training curves: PNG plots of one or more runs' ``metrics.jsonl``, one subplot per metric.

This is the project's one implementation of curve plotting: ``ktae train`` calls it for
``RUN_DIR/curves.png`` and ``ktae viz`` calls it to compare runs on one plot.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ktae.reports.files import run_folders
from ktae.run_folder import METRICS_FILE, is_metric_value, read_jsonl_numbered, write_atomic
from ktae.safe_files import short_repr

# Plotted by default, those a run logged, in this order (`ktae train`'s names); a run that logged
# none of them gets every numeric metric. metrics="all" asks for every numeric metric.
DEFAULT_METRICS = (
    "reward",
    "accuracy",
    "eval/accuracy",
    "completion_length",
    "kl",
    "entropy",
    "ktae/large_bonus_share",
    "ktae/bonus_mean_correct",
    "ktae/bonus_mean_incorrect",
)
# Logged bookkeeping, not training signals.
_NOT_METRICS = frozenset({"step", "epoch", "time", "timestamp", "wall_time"})


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """Read ``RUN_DIR/metrics.jsonl`` (or a metrics JSONL file given directly).

    Returns one dict per logged step, sorted by ``"step"``; when a resumed run logged the
    same step twice, the later record wins. Read as `ktae.run_folder.read_jsonl` reads the run's logs:
    a torn last line (a run killed mid-write) is dropped, any other bad line is an error naming it.
    """
    path = Path(run_dir)
    named = not path.is_dir()  # a file named directly may be a link the user made; a run folder's own is not
    if not named:
        path = path / METRICS_FILE
    if not os.path.lexists(path):
        raise FileNotFoundError(f"no metrics file at {path} (a run folder holds metrics.jsonl)")
    by_step: dict[int, dict] = {}
    for line_number, record in read_jsonl_numbered(path, follow_links=named):
        if "step" not in record:
            raise ValueError(f"{path}:{line_number}: expected a JSON object with a 'step' key")
        step = record["step"]
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            raise ValueError(f"{path}:{line_number}: 'step' must be a number, got {short_repr(step)}")
        by_step.setdefault(int(step), {}).update(record)
    return [by_step[step] for step in sorted(by_step)]


def available_metrics(records_per_run: Sequence[Sequence[dict]]) -> list[str]:
    """Numeric metric names logged by any of the runs, the default ones first, then alphabetical."""
    names = {
        key
        for records in records_per_run
        for record in records
        for key, value in record.items()
        if key not in _NOT_METRICS and is_metric_value(value)
    }
    preferred = [name for name in DEFAULT_METRICS if name in names]
    return preferred + sorted(names - set(preferred))


def default_labels(run_dirs: Sequence[Path]) -> list[str]:
    # The folder name, or as many trailing path parts as it takes to tell runs apart.
    resolved = [path.resolve() for path in run_dirs]
    for depth in range(1, max(len(path.parts) for path in resolved) + 1):
        labels = ["/".join(path.parts[-depth:]) for path in resolved]
        if len(set(labels)) == len(labels):
            return labels
    return [str(path) for path in run_dirs]


def plot_runs(
    run_dirs: Sequence[str | os.PathLike] | str | os.PathLike,
    out_png: str | os.PathLike,
    metrics: Sequence[str] | str | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    """Plot the training curves of one or more runs into one PNG.

    run_dirs: run folders (each holding ``metrics.jsonl``); a single path is accepted too.
    out_png: where to write the PNG (written atomically: temp file, then ``os.replace``).
    metrics: metric names to plot, one subplot each, against ``step``; default: those of
        ``DEFAULT_METRICS`` any run logged (reward, accuracy, lengths, KL, KTAE shares), or every
        numeric metric when it logged none of them; "all": every numeric metric.
    labels: one legend label per run; default: the run folders' names.
    Returns ``out_png`` as a Path.
    """
    run_dirs = run_folders(run_dirs, "plot_runs")
    if labels is None:
        labels = default_labels(run_dirs)
    elif isinstance(labels, str) or len(labels) != len(run_dirs):
        raise ValueError(f"labels must be a list of {len(run_dirs)} names, one per run, got {short_repr(labels)}")
    records_per_run = [read_metrics(path) for path in run_dirs]
    known = available_metrics(records_per_run)
    if not known:
        raise ValueError(f"no numeric metrics logged in {', '.join(str(p) for p in run_dirs)}")
    if metrics is None:
        metrics = [name for name in known if name in DEFAULT_METRICS] or known
    elif metrics == "all":
        metrics = known
    else:
        if isinstance(metrics, str):
            metrics = [metrics]
        missing = [name for name in metrics if name not in known]
        if missing:
            raise ValueError(f"metric(s) {missing} not logged by any run; logged: {known}")
    panels = {
        name: {
            label: [(r["step"], r[name]) for r in records if is_metric_value(r.get(name))]
            for label, records in zip(labels, records_per_run)
        }
        for name in metrics
    }
    return plot_panels(panels, out_png)


def plot_panels(
    panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
    out_png: str | os.PathLike,
    ylim: tuple[float | None, float | None] | None = None,
    bands: Mapping[str, Mapping[str, Sequence[tuple[float, float, float]]]] | None = None,
) -> Path:
    """Plot ``{panel title: {line label: [(step, value), ...]}}`` into one PNG, one subplot per panel.

    ylim: y limits of every panel, None for an automatic end (e.g. (0, None) for shares).
    bands: ``{panel title: {line label: [(step, low, high), ...]}}``, shaded in the line's colour (a
        spread over seeds, say); panels and lines without one get none.
    Lines keep the same colour in every panel; a legend is drawn when there is more than one.
    Written atomically (temp file, then ``os.replace``). Returns ``out_png`` as a Path.
    """
    if not panels:
        raise ValueError("nothing to plot")
    # The object-oriented Agg API: no pyplot global state, safe in threads and without a display.
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != "matplotlib":
            raise
        raise ModuleNotFoundError(
            "PNG curves need matplotlib, which comes with ktae's 'reports' extra: pip install 'ktae[reports]'",
            name=error.name,
        ) from error

    line_labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    colours = {label: f"C{index % 10}" for index, label in enumerate(line_labels)}
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.0 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, (title, lines) in zip(axes, panels.items()):
        for label, band in ((bands or {}).get(title) or {}).items():
            if band and label in colours:
                steps, lows, highs = zip(*band)
                axis.fill_between(steps, lows, highs, color=colours[label], alpha=0.18, linewidth=0)
        for label, points in lines.items():
            if points:
                steps, values = zip(*points)
                axis.plot(
                    steps,
                    values,
                    label=label,
                    color=colours[label],
                    linewidth=1.4,
                    marker="o" if len(points) < 30 else None,
                    markersize=3,
                )
        if ylim is not None:
            axis.set_ylim(*ylim)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step", fontsize=9)
        axis.grid(True, alpha=0.3)
        axis.tick_params(labelsize=8)
    for axis in axes[len(panels) :]:
        axis.set_visible(False)
    if len(line_labels) > 1:
        handles = [Line2D([], [], color=colours[label]) for label in line_labels]
        figure.legend(handles, line_labels, loc="outside lower center", ncols=min(len(line_labels), 4), fontsize=9)

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return write_atomic(out_png, buffer.getvalue())
