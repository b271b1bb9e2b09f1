"""`ktae bench`: a tiny run end to end, and bad options refused with one line (exit 2) before any work."""

import json

import pytest
import torch

from ktae.cli import main

TINY = ["bench", "--groups", "2", "--group-size", "4", "--max-len", "16", "--repeats", "1", "--device", "cpu"]


@pytest.mark.parametrize("backend", ["cpu-kernels", "sort"])
def test_tiny_benchmark_writes_its_rows(tmp_path, capsys, backend):
    out = tmp_path / "rows.json"
    assert main([*TINY, "--backend", backend, "--json", str(out)]) == 0
    [row] = json.loads(out.read_text())["rows"]
    assert (row["groups"], row["rollouts"]) == (2, 8) and row["ktae_s"] > 0 and row["grpo_s"] > 0
    assert row["ktae_over_grpo"] == row["ktae_s"] / row["grpo_s"] and "reference_s" not in row
    output = capsys.readouterr().out
    assert f"backend {backend}" in output and "| 2 | 8 |" in output and "| peak extra mem |\n" in output


@pytest.mark.parametrize(
    "options, message",
    [
        (["--zipf", "1.0"], "--zipf must be a finite number > 1"),
        (["--zipf", "nan"], "--zipf must be a finite number > 1"),
        (["--zipf", "-3"], "--zipf must be a finite number > 1"),
        (["--device", "gpu0"], "--device 'gpu0' is not a torch device"),
        (["--groups", "2,x"], "--groups must be comma-separated integers"),
        (["--json", "{tmp}/missing/rows.json"], "cannot write into"),
        (["--json", "{tmp}"], "is a folder"),
        (["--backend", "cpu-kernels", "--device", "meta"], "the benchmark runs on cpu or cuda"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, capsys, options, message):
    options = [option.format(tmp=tmp_path) for option in options]
    assert main([*TINY, *options]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("ktae bench: error: ") and message in captured.err
    assert captured.err.count("\n") == 1 and "|" not in captured.out  # refused before any benchmark row


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch build without CUDA")
def test_cuda_without_cuda_is_refused(capsys):
    assert main([*TINY, "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
