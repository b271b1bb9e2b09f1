"""``ktae eval`` end to end on a tiny model built here and the benchmark suites shipped with ktae (no downloads)."""

import importlib.util
import json
import os
import runpy
import shlex
import stat
import string
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ktae.cli import main
from ktae.data import apply_template, load_benchmark, render_prompt
from ktae.evaluation import EvalSettings, pass_at_k, summarize, write_results
from ktae.evaluation.eval_folder import results_json
from ktae.evaluation.metrics import maj_at_k
from ktae.tiny import TinyModelConfig, build_model

TARGET = "\\boxed{204}"  # the answer of aime24's first problem


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """A tiny model gains nothing from a second thread, which mostly waits for the first on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A character-level tokenizer and a 2-layer Qwen2 taught to answer TARGET after the test's prompts."""
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<unk>", *sorted(set(string.printable))])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    sizes = TinyModelConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    model = build_model(tokenizer, sizes, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    prompts = [
        render_prompt(apply_template(e["problem"], "qwen_math"))
        for name in ("aime24", "math500")
        for e in load_benchmark(name, limit=2)
    ]
    target = tokenizer(TARGET)["input_ids"] + [tokenizer.eos_token_id]
    for step in range(40):
        ids = tokenizer(prompts[step % len(prompts)])["input_ids"]
        loss = model(input_ids=torch.tensor([ids + target]), labels=torch.tensor([[-100] * len(ids) + target])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def eval_run(tiny_model_dir, tmp_path_factory):
    """No --data-dir: the packaged suites."""
    out = tmp_path_factory.mktemp("eval")
    argv = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--benchmarks",
        "aime24,math500",
        "--limit",
        "2",
        "--max-new-tokens",
        "16",
        "--batch-size",
        "2",
        "--output-dir",
        str(out),
    ]
    return argv, out


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_eval_end_to_end(eval_run, capsys, umask_022):
    argv, out = eval_run
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["num_examples"] == {"aime24": 2, "math500": 2}
    # the model answers 204 everywhere: right on aime24's first problem only
    assert results["results"] == {"aime24": 50.0, "math500": 0.0}
    assert results["avg"] == 25.0
    assert results["formatted"] == {"aime24": 100.0, "math500": 100.0}
    assert results["avg_lens"]["aime24"] == results["max_lens"]["aime24"] == len(TARGET) + 1  # + end of sequence
    rows = [json.loads(line) for line in (out / "responses" / "aime24.jsonl").read_text().splitlines()]
    assert [r["extracted"] for r in rows] == ["204", "204"]
    assert [r["correct"] for r in rows] == [True, False]
    assert rows[0]["prompt"].startswith("<|im_start|>system\nPlease reason step by step")
    assert "| AIME24 | 2 | 1 | 50.0 | [0.0, 100.0] | 100.0 | 12 | 12 | 0.0 |" in printed
    # greedy, one sample: the interval resamples the two problems (one right, one wrong)
    assert results["samples"] == {"aime24": 1, "math500": 1} and results["ci95"]["aime24"] == [0.0, 100.0]
    assert [p["correct"] for p in results["per_problem"]["aime24"]] == [[True], [False]]
    for path in (out / "results.json", out / "responses" / "aime24.jsonl", out / "settings.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the umask decides, as for any file the user writes

    # --resume reuses the finished benchmarks (no model needed for them) and gives the same results
    (out / "responses" / "math500.jsonl").unlink()
    assert main([*argv, "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["results"] == results["results"]
    assert main([*argv[:-4], "--max-new-tokens", "8", "--output-dir", str(out), "--resume"]) == 2
    assert "settings differ in max_new_tokens" in capsys.readouterr().err


def test_a_rescored_run_is_written_in_the_generated_runs_layout(eval_run, tmp_path, capsys):
    argv, out = eval_run
    if not (out / "results.json").exists():
        assert main(argv) == 0
    again = tmp_path / "again"
    assert main(["eval", "--responses", str(out), "--output-dir", str(again)]) == 0
    generated, rescored = (json.loads((folder / "results.json").read_text()) for folder in (out, again))
    assert generated.keys() == rescored.keys() and generated["settings"].keys() == rescored["settings"].keys()
    assert rescored["results"] == generated["results"] and rescored["per_problem"] == generated["per_problem"]
    assert (generated["settings"]["check_timeout_s"], generated["settings"]["format"]) == (5.0, None)
    assert (rescored["settings"]["template"], rescored["settings"]["format"]) == (None, "auto")
    for folder, results in ((out, generated), (again, rescored)):  # the one writer's format
        assert (folder / "results.json").read_text() == results_json(results)


@pytest.mark.parametrize("reference", [[], ["paper"], ["{suites}/README.md"], ["{suites}/reference_scores.json"]])
def test_compare_with_reference_rows(reference, eval_run, math_eval_dir, tmp_path, capsys):
    argv, out = eval_run
    if not (out / "results.json").exists():
        assert main(argv) == 0
    capsys.readouterr()
    given = [r.format(suites=math_eval_dir) for r in reference]
    assert main(["eval", "--compare", str(out / "results.json"), "--reference", *given]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| model | AIME24 | AMC23 | MATH500 | Minerva | Olympiad | avg |"
    assert len(table) == 2 + 8 + 1
    assert "| Qwen2.5-Math-7B + DAPO+KTAE | 36.7 | 63.9 | 83.2 | 35.3 | 43.7 | 52.5 |" in table
    assert table[-1].endswith("| 50.0 | – | 0.0 | – | – | 25.0 |")


def test_a_data_dir_replaces_the_packaged_suites(tiny_model_dir, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "aime24.jsonl").write_text(json.dumps({"problem": "What is 200 + 4?", "answer": "204"}) + "\n")
    argv = ["eval", "--model", str(tiny_model_dir), "--benchmarks", "aime24", "--max-new-tokens", "16"]
    assert main([*argv, "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["num_examples"] == {"aime24": 1}
    assert [json.loads(line)["problem"] for line in (tmp_path / "out" / "responses" / "aime24.jsonl").open()] == [
        "What is 200 + 4?"
    ]


def test_two_runs_of_one_model_are_told_apart(eval_run, tmp_path, capsys):
    argv, out = eval_run
    if not (out / "results.json").exists():
        assert main(argv) == 0
    capsys.readouterr()
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "results.json").write_text((out / "results.json").read_text())
    assert main(["eval", "--compare", str(out / "results.json"), str(other / "results.json")]) == 0
    side_by_side, paired = capsys.readouterr().out.split("\n\n", 1)
    labels = [row.split("|")[1].strip() for row in side_by_side.splitlines()[2:]]
    assert labels[0] != labels[1] and labels[1].endswith("(other-run)")
    assert "| avg | 4 | 25.0 | 25.0 | +0.0 | [0.0, 0.0] | 1 | no significant difference at 0.05 |" in paired


def test_sampling_pass_at_k_and_resume(tiny_model_dir, math_eval_dir, tmp_path, capsys):
    out = tmp_path / "sampled"
    argv = ["eval", "--model", str(tiny_model_dir), "--data-dir", str(math_eval_dir), "--benchmarks", "aime24"]
    argv += ["--limit", "2", "--max-new-tokens", "16", "--output-dir", str(out)]
    argv += ["--samples", "3", "--temperature", "1.5", "--top-p", "0.95", "--seed", "7", "--pass-k", "1,3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    rows = [json.loads(line) for line in (out / "responses" / "aime24.jsonl").read_text().splitlines()]
    assert [(r["index"], r["sample"]) for r in rows] == [(i, s) for i in range(2) for s in range(3)]
    assert results["samples"] == {"aime24": 3} and results["settings"]["temperature"] == 1.5
    problems = results["per_problem"]["aime24"]
    assert [p["correct"] for p in problems] == [[r["correct"] for r in rows[3 * i : 3 * i + 3]] for i in range(2)]
    correct = [sum(p["correct"]) for p in problems]
    assert results["results"]["aime24"] == pytest.approx(100 * sum(correct) / 6)
    assert results["pass_at_k"]["aime24"]["1"] == pytest.approx(results["results"]["aime24"])
    assert results["pass_at_k"]["aime24"]["3"] == pytest.approx(50 * sum(pass_at_k(3, c, 3) for c in correct))
    majority = [maj_at_k(p["groups"], p["correct"], 3) for p in problems]
    assert results["maj_at_k"]["aime24"]["3"] == pytest.approx(50 * sum(majority))
    low, high = results["ci95"]["aime24"]
    assert low <= results["results"]["aime24"] <= high
    assert results["truncated"]["aime24"] == pytest.approx(100 * sum(r["finish_reason"] == "length" for r in rows) / 6)
    assert "pass@3 %" in printed and "maj@3 %" in printed

    # resuming regenerates a deleted benchmark with the same samples (each benchmark has its own seed)
    before = (out / "responses" / "aime24.jsonl").read_text()
    (out / "responses" / "aime24.jsonl").unlink()
    assert main([*argv, "--resume"]) == 0
    assert (out / "responses" / "aime24.jsonl").read_text() == before
    assert main([*argv, "--samples", "4", "--seed", "8", "--resume"]) == 2
    assert "settings differ in samples, seed" in capsys.readouterr().err


def _records(correct_by_problem: list[list[bool]]) -> list[dict]:
    """Scored response records (one per sample) of a benchmark whose problem i is "problem i"."""
    return [
        {
            "index": i,
            "sample": s,
            "problem": f"problem {i}",
            "answer": "1",
            "extracted": "1" if right else "2",
            "correct": right,
            "num_tokens": 5,
            "finish_reason": "stop",
            "answer_group": 0 if right else 1,
        }
        for i, samples in enumerate(correct_by_problem)
        for s, right in enumerate(samples)
    ]


def _write_run(folder, records_by_benchmark, responses=False):
    results = summarize(records_by_benchmark, EvalSettings(model=folder.name), resamples=2000)
    if responses:  # a results file from before per-problem records, with its responses files
        del results["per_problem"]
        for name, records in records_by_benchmark.items():
            (folder / "responses").mkdir(parents=True, exist_ok=True)
            (folder / "responses" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return write_results(folder, results)


def test_paired_comparison_of_runs(tmp_path, capsys):
    a = [[i < 20] for i in range(60)]  # 20 of 60
    better = [[i < 34] for i in range(60)]  # 14 more, none lost
    a_path = _write_run(tmp_path / "base", {"aime24": _records(a), "math500": _records(a)})
    b_path = _write_run(tmp_path / "ktae", {"aime24": _records(better), "math500": _records(better)}, responses=True)
    same_path = _write_run(tmp_path / "again", {"aime24": _records(a), "math500": _records(a)})
    assert main(["eval", "--compare", str(a_path), str(b_path), str(same_path)]) == 0
    printed = capsys.readouterr().out
    assert (
        "| base | 33.3 | 33.3 | 33.3 |\n| ktae | 56.7 | 56.7 | 56.7 |" in printed
    )  # the side-by-side table stays first
    tables = printed.split("A: base")[1:]
    assert len(tables) == 2 and "B: ktae" in tables[0] and "B: again" in tables[1]
    p_value = 2 / 2**14  # exact McNemar: 14 discordant problems, all won by B
    assert "| AIME24 | 60 | 33.3 | 56.7 | +23.3 |" in tables[0]
    assert f"| {p_value:.3g} | B is better (p < 0.05) | exact sign test (McNemar) |" in tables[0]
    assert "B beats A on the mean of 2 benchmarks at the 0.05 level" in tables[0]
    assert "| avg | 120 | 33.3 | 33.3 | +0.0 | [0.0, 0.0] | 1 | no significant difference at 0.05 |" in tables[1]
    assert "B does not beat A on the mean of 2 benchmarks" in tables[1]

    # samples: avg@4 against greedy, paired over the same problems
    sampled = [[i < 20, i < 40, True, i % 2 == 0] for i in range(60)]  # avg@4 = (20 + 40 + 60 + 30) / 240
    sampled_path = _write_run(tmp_path / "sampled", {"aime24": _records(sampled)})
    assert main(["eval", "--compare", str(a_path), str(sampled_path)]) == 0
    printed = capsys.readouterr().out
    assert "| AIME24 | 60 | 33.3 | 62.5 | +29.2 |" in printed and "B beats A on the benchmark" in printed
    assert "sign-flip, 100000 random flips" in printed

    # other problems (one edited, one left out by --limit): named, exit 2
    edited = [r for r in _records(a) if r["index"] < 59]
    edited[5]["problem"] = "problem 5, edited"
    edited_path = _write_run(tmp_path / "edited", {"aime24": edited})
    assert main(["eval", "--compare", str(a_path), str(edited_path)]) == 2
    error = capsys.readouterr().err
    assert "aime24: the runs cover different problems (only in A: problem(s) 5, 59; only in B: problem(s) 5)" in error

    # an old results file without per-problem records or responses: the table, and a note
    old = json.loads(a_path.read_text())
    del old["per_problem"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps(old))
    assert main(["eval", "--compare", str(a_path), str(tmp_path / "old" / "results.json")]) == 0
    assert "no paired comparison" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nonexistent/model"], "model path not found: '/nonexistent/model'"),
        (["--model", "{model}", "--benchmarks", "aime24,gsm8k"], "unknown benchmark(s) 'gsm8k'"),
        (
            ["--model", "{model}", "--benchmarks", "amc23", "--data-dir", "{bad}"],
            "amc23.jsonl:2: missing field 'answer'",
        ),
        (["--model", "{model}", "--data-dir", "{bad}", "--hub"], "--data-dir and --hub are two sources"),
        (["--compare", "{bad}/nope.json"], "results file not found"),
        (["--benchmarks", "aime24"], "--model is required"),
        (["--model", "{model}", "--benchmarks", "aime24", "--data-dir", "{bad}"], "benchmark 'aime24' has no problems"),
        (["--model", "{model}", "--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
        (["--model", "{model}", "--samples", "0"], "samples must be an integer >= 1, got 0"),
        (["--model", "{model}", "--samples", "4"], "samples = 4 needs temperature > 0"),
        (
            ["--model", "{model}", "--temperature", "nan"],
            "temperature must be 0 (greedy) or a finite number >= 0.01, got nan",
        ),
        (
            ["--model", "{model}", "--temperature", "1e-320"],
            "temperature must be 0 (greedy) or a finite number >= 0.01",
        ),
        (["--model", "{model}", "--temperature", "1", "--top-p", "0"], "top_p must be in (0, 1], got 0.0"),
        (["--model", "{model}", "--top-p", "0.9"], "top_p applies to sampling"),
        (["--model", "{model}", "--pass-k", "0"], "pass@k needs integers k >= 1, got 0"),
        (["--model", "{model}", "--pass-k", "1,x"], "--pass-k: expected comma-separated integers"),
        (["--model", "{model}", "--pass-k", "4"], "pass@4 needs at least 4 samples per problem"),
        (["--model", "{model}", "--samples-per-benchmark", "gsm8k=4"], "unknown benchmark(s) 'gsm8k'"),
        (["--model", "{model}", "--samples-per-benchmark", "aime24"], "expected NAME=N, got 'aime24'"),
        (
            [
                "--model",
                "{model}",
                "--benchmarks",
                "math500",
                "--temperature",
                "1",
                "--samples-per-benchmark",
                "aime24=4",
            ],
            "samples_per_benchmark names aime24, not among the benchmarks run",
        ),
        pytest.param(
            ["--model", "{model}", "--device", "cuda"],
            "device 'cuda': CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
        pytest.param(
            ["--model", "{model}", "--backend", "vllm"],
            "backend 'vllm': vllm is not installed",
            marks=pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed"),
        ),
    ],
)
def test_bad_input_is_named(args, message, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "amc23.jsonl").write_text('{"problem": "p", "answer": "1"}\n{"problem": "q"}\n')
    (tmp_path / "aime24.jsonl").write_text("")
    args = [a.format(model=tiny_model_dir, bad=tmp_path) for a in args]
    assert main(["eval", *args, "--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1  # one line, no traceback


def test_verl_fsdp_checkpoint_after_model_merger(tiny_model_dir, math_eval_dir, tmp_path, capsys, monkeypatch):
    """verl saves FSDP shards plus a huggingface/ folder; verl's own merger turns them into a model folder
    that ``ktae eval --model`` takes. The shards here are written in verl's layout by hand (one rank, plain
    tensors, as an FSDP run on one GPU saves them), not by a verl training run."""
    pytest.importorskip("verl")
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    actor = tmp_path / "global_step_1" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    state = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    torch.save(state, actor / "model_world_size_1_rank_0.pt")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 1, "world_size": 1}))
    for file in tiny_model_dir.iterdir():
        if file.suffix != ".safetensors":
            (actor / "huggingface" / file.name).write_bytes(file.read_bytes())
    merged = tmp_path / "merged"
    # python -m verl.model_merger merge --backend fsdp --local_dir ACTOR --target_dir MERGED, in this process
    # (importing verl costs more than the merge; the verl integration tests import it anyway)
    argv = ["verl.model_merger", "merge", "--backend", "fsdp", "--local_dir", str(actor), "--target_dir", str(merged)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_module("verl.model_merger", run_name="__main__", alter_sys=True)
    weights = load_file(merged / "model.safetensors")  # verl stores bfloat16
    assert all(torch.equal(weights[k], state[k].bfloat16()) for k in weights) and weights.keys() <= state.keys()

    out = tmp_path / "eval"
    argv = ["eval", "--model", str(merged), "--data-dir", str(math_eval_dir), "--benchmarks", "aime24", "--limit"]
    assert main([*argv, "1", "--max-new-tokens", "4", "--dtype", "float32", "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["num_examples"] == {"aime24": 1} and len(results["per_problem"]["aime24"]) == 1


def test_rescore_outputs_without_generating(tmp_path, capsys):
    """``--responses``: grade a file of model outputs (the released format) and compare verdicts."""
    released = Path(__file__).parents[1] / "evaluation" / "data" / "released_outputs.json"
    out = tmp_path / "rescored"
    assert main(["eval", "--responses", str(released), "--output-dir", str(out), "--check-timeout", "10"]) == 0
    printed = capsys.readouterr().out
    assert "| Minerva | 2 | 1 | 50.0 | [0.0, 100.0] | – | – | 100.0 | – | – | – |" in printed  # no token counts
    assert "agreement with the file's verdicts" in printed and "| all | 9 |" in printed
    assert "disagreements (2):" in printed and "- minerva #1: reference `\\frac{\\sin(3t)}{8}`" in printed
    assert json.loads((out / "results.json").read_text())["results"]["amc23"] == 50.0

    # its own output, in ktae's format, agrees with itself
    assert main(["eval", "--responses", str(out), "--format", "ktae", "--output-dir", str(tmp_path / "b")]) == 0
    assert "disagreements (0):" in capsys.readouterr().out


def test_compare_names_the_graders_of_runs_graded_differently(tmp_path, capsys):
    """The same outputs graded by ours and by stock math-verify: compared, each run's label naming its grader."""
    released = Path(__file__).parents[1] / "evaluation" / "data" / "released_outputs.json"
    runs = []
    for grader in ("ktae", "math-verify"):
        out = tmp_path / grader
        assert main(["eval", "--responses", str(released), "--grader", grader, "--output-dir", str(out)]) == 0
        assert f"(ours: --grader {grader})" in capsys.readouterr().out
        runs.append(str(out / "results.json"))
    assert main(["eval", "--compare", *runs]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("note: these runs were graded differently (ktae, math-verify)")
    assert (
        "| released_outputs (ktae) [ktae] |" in printed
        and "| released_outputs (math-verify) [math-verify] |" in printed
    )
    assert main(["eval", "--compare", runs[0], runs[0]]) == 0  # one grader: no note, labels as they were
    assert "graded differently" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--responses", "{released}", "--model", "m"], "does not go with --model"),
        (["--responses", "{tmp}/missing.json"], "responses file not found"),
        (["--responses", "{released}", "--format", "ktae"], "not valid JSON"),
        (["--responses", "{released}", "--check-timeout", "0"], "timeout_s must be > 0"),
    ],
)
def test_rescore_bad_input_is_named(args, message, tmp_path, capsys):
    released = Path(__file__).parents[1] / "evaluation" / "data" / "released_outputs.json"
    args = [a.format(released=released, tmp=tmp_path) for a in args]
    assert main(["eval", *args, "--output-dir", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_eval_of_a_folder_without_a_model_is_a_named_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "--model", str(empty), "--benchmarks", "aime24", "--data-dir", str(tmp_path)]) == 2
    assert "holds no model: no config.json and no tokenizer files" in capsys.readouterr().err
    from ktae.tiny import build_tokenizer

    build_tokenizer().save_pretrained(empty)  # a tokenizer alone is not a model either
    assert main(["eval", "--model", str(empty), "--benchmarks", "aime24", "--data-dir", str(tmp_path)]) == 2
    assert "has no config.json: it holds a tokenizer, not a model" in capsys.readouterr().err


RELEASED = Path(__file__).parents[1] / "evaluation" / "data" / "released_outputs.json"


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    return captured.err


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(results=[1]), "field 'results' must be an object of benchmarks, got list"),
        (lambda r: r["results"].update(aime24="x"), "field 'results' of aime24 must be a number in [0, 100], got 'x'"),
        (lambda r: r["results"].update(aime24=3350.0), "field 'results' of aime24 must be a number in [0, 100]"),
        (lambda r: r.update(avg="x"), "field 'avg' must be a number in [0, 100], got 'x'"),
        (lambda r: r["per_problem"]["aime24"][0].pop("key"), "field 'per_problem' of aime24[0]: field 'key' must be"),
        (lambda r: r["per_problem"]["aime24"][0].update(correct=[]), "field 'correct' must be a non-empty list"),
        (
            lambda r: r["per_problem"].update(aime24=5),
            "field 'per_problem' of aime24 must be a list of per-problem records, got int",
        ),
        (lambda r: r.pop("per_problem") and r["responses"].update(aime24="../x.jsonl"), "field 'responses' of aime24"),
    ],
)
def test_compare_of_malformed_results_is_one_named_line(tmp_path, capsys, change, message):
    good = _write_run(tmp_path / "good", {"aime24": _records([[True], [False]])})
    results = json.loads(good.read_text())
    change(results)
    (tmp_path / "bad").mkdir()
    bad = tmp_path / "bad" / "results.json"
    bad.write_text(json.dumps(results))
    assert main(["eval", "--compare", str(good), str(bad)]) == 2
    error = _one_line_error(capsys)
    assert error.startswith(f"ktae eval: error: {bad}: ") and message in error


@pytest.mark.parametrize(
    "content, message",
    [
        ("{nope", "not valid JSON (Expecting property name enclosed in double quotes, line 1 column 2)"),
        ('{"results": {}, "results": {"aime24": 1.0}}', "duplicate key 'results'"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply to read"),
    ],
    ids=["not JSON", "a key twice", "nested 100,000 deep"],
)
def test_compare_of_a_damaged_file_names_it(tmp_path, capsys, content, message):
    bad = tmp_path / "results.json"
    bad.write_text(content)
    assert main(["eval", "--compare", str(bad)]) == 2
    assert f"ktae eval: error: {bad}: {message}" in _one_line_error(capsys)


def test_a_bad_reference_file_is_named(tmp_path, capsys):
    good = _write_run(tmp_path / "good", {"aime24": _records([[True], [False]])})
    (tmp_path / "ref.md").write_text("| model | AIME24 | MATH500 |\n| --- | --- | --- |\n| x | 12.5 | n/a |\n")
    assert main(["eval", "--compare", str(good), "--reference", str(tmp_path / "ref.md")]) == 2
    assert f"{tmp_path / 'ref.md'}:3: column math500: not a number: 'n/a'" in _one_line_error(capsys)
    (tmp_path / "ref.json").write_text(json.dumps({"rows": [{"label": "x", "results": {"aime24": 3350}}]}))
    assert main(["eval", "--compare", str(good), "--reference", str(tmp_path / "ref.json")]) == 2
    assert "ref.json: row 0: field 'results' of aime24 must be a number in [0, 100]" in _one_line_error(capsys)


def test_text_from_input_files_is_printed_escaped(tmp_path, capsys):
    """A terminal shows escape sequences and direction overrides from a file as text; it never acts on them."""
    run = _write_run(tmp_path / "evil", {"aime24": _records([[True], [False]])})
    results = json.loads(run.read_text())
    results["model"] = "evil\x1b[2J\x1b]0;owned\x07\u202e"
    run.write_text(json.dumps(results))
    assert main(["eval", "--compare", str(run), str(run)]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\u202e" not in printed and "\x07" not in printed
    assert "| evil\\x1b[2J\\x1b]0;owned\\x07\\u202e (evil) |" in printed

    released = json.loads(RELEASED.read_text())[:1]
    released[0]["model_output"] = ["so \\boxed{7\x1b[31m}"]  # the file says right, we say wrong: listed
    (tmp_path / "r.json").write_text(json.dumps(released))
    assert main(["eval", "--responses", str(tmp_path / "r.json"), "--output-dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "extracted `7\\x1b[31m`" in printed and "\x1b" not in printed
    assert "\x1b" not in (tmp_path / "out" / "agreement.md").read_text()


def test_rescoring_into_a_used_folder_keeps_one_run(tmp_path, capsys):
    """The earlier run's responses and agreement go; a later re-score of the folder reads this run only."""
    out = tmp_path / "out"
    assert main(["eval", "--responses", str(RELEASED), "--output-dir", str(out)]) == 0
    assert (out / "agreement.json").exists() and len(list((out / "responses").iterdir())) == 5
    second = tmp_path / "second.jsonl"
    second.write_text(json.dumps({"benchmark": "aime24", "answer": "7", "response": "\\boxed{7}"}) + "\n")
    assert main(["eval", "--responses", str(second), "--output-dir", str(out)]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "responses",
        "responses/aime24.jsonl",
        "results.json",
    ]
    assert main(["eval", "--responses", str(out), "--output-dir", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "results.json").read_text())["results"] == {"aime24": 100.0}
    capsys.readouterr()

    (out / "mine.txt").write_text("not ktae's")
    assert main(["eval", "--responses", str(RELEASED), "--output-dir", str(out)]) == 2
    assert f"{out} holds files that are not an evaluation's ('mine.txt')" in _one_line_error(capsys)
    assert (out / "mine.txt").read_text() == "not ktae's" and (out / "responses" / "aime24.jsonl").exists()


def test_generating_into_a_used_folder_replaces_the_earlier_run(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tiny_model_dir), "--limit", "1", "--max-new-tokens", "4", "--output-dir", str(out)]
    assert main([*argv, "--benchmarks", "aime24,math500"]) == 0
    assert main([*argv, "--benchmarks", "aime24"]) == 0
    assert sorted(p.name for p in (out / "responses").iterdir()) == ["aime24.jsonl"]
    assert list(json.loads((out / "results.json").read_text())["results"]) == ["aime24"]
    (out / "results.json").unlink()  # as a run stopped before its end leaves it
    capsys.readouterr()
    assert main([*argv, "--benchmarks", "aime24"]) == 2
    assert "holds an evaluation that did not finish" in _one_line_error(capsys)
    assert main([*argv, "--benchmarks", "aime24", "--resume"]) == 0


def test_limits_and_entries_that_are_not_files_are_one_named_line(tmp_path, capsys):
    import gzip

    bomb = tmp_path / "bomb.json.gz"
    bomb.write_bytes(gzip.compress(b" " * (3 << 20) + RELEASED.read_bytes()))
    out = ["--output-dir", str(tmp_path / "out")]
    assert main(["eval", "--responses", str(bomb), "--max-responses-mb", "2", *out]) == 2
    assert f"{bomb} decompresses to more than 2 MiB: refused" in _one_line_error(capsys)
    assert main(["eval", "--responses", str(bomb), "--max-responses-mb", "4", *out]) == 0
    capsys.readouterr()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(bomb.read_bytes()[:-100])
    assert main(["eval", "--responses", str(cut), *out]) == 2
    assert f"{cut}: truncated gzip data" in _one_line_error(capsys)
    os.mkfifo(tmp_path / "aime24.jsonl")
    argv = ["eval", "--model", "smollm2", "--benchmarks", "aime24", "--data-dir", str(tmp_path), *out]
    assert main(argv) == 2  # at once: a FIFO is not waited on
    assert f"{tmp_path / 'aime24.jsonl'} is a FIFO (named pipe), not a regular file: refused" in _one_line_error(capsys)


def test_ctrl_c_while_generating_says_how_to_resume(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C: one line that says what is kept and the command that resumes, exit 130, no worker left."""
    from ktae.evaluation.generation import TransformersGenerator

    generate = TransformersGenerator.generate

    def interrupted_on_math500(self, prompts, max_new_tokens, desc="", **kwargs):
        if desc == "math500":
            raise KeyboardInterrupt
        return generate(self, prompts, max_new_tokens, desc, **kwargs)

    out = tmp_path / "out"
    argv = ["eval", "--model", str(tiny_model_dir), "--benchmarks", "aime24,math500", "--limit", "1"]
    argv += ["--max-new-tokens", "16", "--output-dir", str(out)]
    monkeypatch.setattr(TransformersGenerator, "generate", interrupted_on_math500)
    before = set(_children(os.getpid()))
    assert main(argv) == 130
    error = capsys.readouterr().err  # progress bars, then one line
    assert "Traceback" not in error
    line = error.splitlines()[-1]
    assert line.startswith(f"ktae eval: stopped (Ctrl-C); the finished benchmarks (aime24) are kept in {out}; ")
    resume = shlex.split(line.split("to continue: ", 1)[1])
    assert resume[:2] == ["ktae", "eval"] and resume[-1] == "--resume"
    assert sorted(resume[2:-1]) == sorted(argv[1:])  # the same options
    assert set(_children(os.getpid())) <= before  # the answer checker's workers are gone

    def only_math500(self, prompts, max_new_tokens, desc="", **kwargs):
        assert desc == "math500", "a resumed run generates the unfinished benchmarks only"
        return generate(self, prompts, max_new_tokens, desc, **kwargs)

    monkeypatch.setattr(TransformersGenerator, "generate", only_math500)
    assert main(resume[1:]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["num_examples"] == {"aime24": 1, "math500": 1} and results["results"]["aime24"] == 100.0


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    children = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.append(int(stat_file.parent.name))
    return children


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_while_rescoring_is_one_line_and_leaves_no_worker(tmp_path):
    import signal
    import subprocess
    import time

    many = tmp_path / "many.jsonl"  # enough distinct checks to be interrupted in the middle of them
    lines = [
        {
            "benchmark": "math500",
            "index": i,
            "answer": f"\\frac{{{i}}}{{7}}",
            "response": f"\\boxed{{\\sqrt{{{i}}}+x^{i}}}",
        }
        for i in range(20_000)
    ]
    many.write_text("".join(json.dumps(line) + "\n" for line in lines))
    command = [sys.executable, "-m", "ktae", "eval", "--responses", str(many), "--output-dir", str(tmp_path / "out")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        workers: list[int] = []
        deadline = time.monotonic() + 240
        while len(workers) < 1 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.5)
            workers = _children(process.pid)
        time.sleep(3)  # the workers have started checking
        workers = _children(process.pid)
        assert workers and process.poll() is None
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "ktae eval: stopped (Ctrl-C); the re-scored outputs are written once all are graded: nothing was written; "
        "run the command again"
    )
    deadline = time.monotonic() + 10  # the workers were closed before the command returned; allow for a slow /proc
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)
    assert not (tmp_path / "out").exists()
