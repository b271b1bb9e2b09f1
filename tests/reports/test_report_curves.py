import json
import logging
import sys

import numpy as np
import pytest

from ktae.reports.curves import available_metrics, plot_panels, plot_runs, read_metrics


def _write_run(run_dir, records):
    run_dir.mkdir(parents=True)
    with (run_dir / "metrics.jsonl").open("w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return run_dir


def _colour_pixels(png, rgb):
    import matplotlib.image

    image = matplotlib.image.imread(png)[..., :3]
    return int(np.sum(np.all(np.abs(image - np.array(rgb) / 255.0) < 0.02, axis=-1)))


def test_read_metrics_sorts_steps_and_keeps_the_last_record_of_a_resumed_step(tmp_path):
    run = _write_run(
        tmp_path / "run",
        [{"step": 2, "reward": 0.5}, {"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.7, "accuracy": 0.3}],
    )
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2]
    assert records[1] == {"step": 2, "reward": 0.7, "accuracy": 0.3}


def test_read_metrics_names_the_bad_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "reward": 1}\n{"step": 2, \n{"step": 3, "reward": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        read_metrics(run)
    (run / "metrics.jsonl").write_text('{"step": 1, "reward": 1}\n{"reward": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: .*'step'"):
        read_metrics(run)
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl"):
        read_metrics(tmp_path / "nowhere")


def test_read_metrics_of_a_run_killed_mid_write_drops_the_torn_last_line(tmp_path, caplog):
    run = _write_run(tmp_path / "run", [{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.2}])
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 3, "rew')
    with caplog.at_level(logging.WARNING, logger="ktae.run_folder"):
        assert read_metrics(run) == [{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.2}]
    assert "metrics.jsonl: dropped a torn last line" in caplog.text


def test_available_metrics_puts_default_ones_first_and_skips_non_numbers():
    records = [
        [{"step": 1, "loss": 1.0, "reward": 0.2, "note": "x", "epoch": 0.1, "ktae/strong_share": 0.3}],
        [{"step": 1, "accuracy": 0.5, "flag": True}],
    ]
    assert available_metrics(records) == ["reward", "accuracy", "ktae/strong_share", "loss"]


def test_default_plot_keeps_to_the_main_metrics_unless_all_are_asked_for(tmp_path):
    import matplotlib.image

    records = [{"step": s, "reward": s, "accuracy": s, "grad_norm": 1.0, "clip_ratio/low_mean": 0.0} for s in (1, 2)]
    run = _write_run(tmp_path / "run", records)
    # Two subplots side by side vs a row of three plus one: the figure grows with the panel count.
    default = matplotlib.image.imread(plot_runs([run], tmp_path / "default.png")).shape
    every = matplotlib.image.imread(plot_runs([run], tmp_path / "all.png", metrics="all")).shape
    assert default[1] < every[1] and default[0] < every[0]
    only_others = _write_run(tmp_path / "other", [{"step": 1, "grad_norm": 1.0}])
    assert plot_runs([only_others], tmp_path / "other.png").is_file()  # falls back to what was logged


def test_plot_runs_draws_one_line_per_run(tmp_path):
    steps = range(1, 21)
    first = _write_run(tmp_path / "a" / "run", [{"step": s, "reward": s / 20, "accuracy": 0.5} for s in steps])
    second = _write_run(tmp_path / "b" / "run", [{"step": s, "reward": 1 - s / 20} for s in steps])
    out = plot_runs([first, second], tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png" and out.stat().st_size > 0
    # matplotlib's default cycle: C0 blue for the first run, C1 orange for the second.
    assert _colour_pixels(out, (31, 119, 180)) > 100
    assert _colour_pixels(out, (255, 127, 14)) > 100
    assert not list(out.parent.glob(".*"))  # no temp file left behind

    only_first = plot_runs([first], tmp_path / "one.png", metrics=["accuracy"])
    assert _colour_pixels(only_first, (31, 119, 180)) > 100
    assert _colour_pixels(only_first, (255, 127, 14)) == 0


def test_plot_runs_rejects_unknown_metrics_and_bad_labels(tmp_path):
    run = _write_run(tmp_path / "run", [{"step": 1, "reward": 1.0}])
    with pytest.raises(ValueError, match="accuracy"):
        plot_runs([run], tmp_path / "x.png", metrics=["accuracy"])
    with pytest.raises(ValueError, match="labels"):
        plot_runs([run], tmp_path / "x.png", labels=["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        plot_runs([], tmp_path / "x.png")


def test_plot_panels_shades_a_band_in_the_line_colour(tmp_path):
    line = {"acc": {"mean": [(s, 0.5) for s in range(10)]}}
    band = {"acc": {"mean": [(s, 0.2, 0.8) for s in range(10)]}}
    plain = plot_panels(line, tmp_path / "plain.png")
    shaded = plot_panels(line, tmp_path / "shaded.png", bands=band)
    light_blue = (215, 231, 241)  # C0 at alpha 0.18 over white
    assert _colour_pixels(plain, light_blue) == 0
    assert _colour_pixels(shaded, light_blue) > 1000
    assert _colour_pixels(shaded, (31, 119, 180)) > 100  # the line itself is drawn over it


def test_without_matplotlib_the_curves_name_the_extra(tmp_path, monkeypatch):
    # matplotlib comes with the `reports` extra only; a core install says so instead of a bare ImportError.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ModuleNotFoundError
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'ktae\[reports\]'"):
        plot_panels({"reward": {"run": [(1, 0.5), (2, 0.7)]}}, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()
