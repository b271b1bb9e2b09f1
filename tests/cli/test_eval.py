"""``ktae eval`` end to end on a tiny model built here (no downloads) and the shared benchmark data."""

import json
import string

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ktae.cli import main
from ktae.data import apply_template, load_benchmark, render_prompt
from ktae.integrations.trl.tiny import TinyModelConfig, build_model

TARGET = "\\boxed{204}"  # the answer of aime24's first problem


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """A tiny model gains nothing from threads, and on a busy 2-core machine they make it 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, math_eval_dir):
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
        for e in load_benchmark(name, math_eval_dir, limit=2)
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
def eval_run(tiny_model_dir, math_eval_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    argv = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--data-dir",
        str(math_eval_dir),
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


def test_eval_end_to_end(eval_run, capsys):
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
    assert "| AIME24 | 2 | 50.0 | 100.0 | 12 | 12 |" in printed

    # --resume reuses the finished benchmarks (no model needed for them) and gives the same results
    (out / "responses" / "math500.jsonl").unlink()
    assert main(argv + ["--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["results"] == results["results"]
    assert main([*argv[:-4], "--max-new-tokens", "8", "--output-dir", str(out), "--resume"]) == 2
    assert "settings differ in max_new_tokens" in capsys.readouterr().err


def test_compare_with_reference_rows(eval_run, math_eval_dir, tmp_path, capsys):
    argv, out = eval_run
    if not (out / "results.json").exists():
        assert main(argv) == 0
    capsys.readouterr()
    assert main(["eval", "--compare", str(out / "results.json"), "--reference", str(math_eval_dir / "README.md")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| model | AIME24 | AMC23 | MATH500 | Minerva | Olympiad | avg |"
    assert "| Qwen2.5-Math-7B + DAPO+KTAE | 36.7 | 63.9 | 83.2 | 35.3 | 43.7 | 52.5 |" in table
    assert table[-1].endswith("| 50.0 | – | 0.0 | – | – | 25.0 |")

    # two runs of one model are told apart by their folders
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "results.json").write_text((out / "results.json").read_text())
    assert main(["eval", "--compare", str(out / "results.json"), str(other / "results.json")]) == 0
    labels = [row.split("|")[1].strip() for row in capsys.readouterr().out.splitlines()[2:]]
    assert labels[0] != labels[1] and labels[1].endswith("(other-run)")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nonexistent/model"], "model path not found: '/nonexistent/model'"),
        (["--model", "{model}", "--benchmarks", "aime24,gsm8k"], "unknown benchmark(s) 'gsm8k'"),
        (
            ["--model", "{model}", "--benchmarks", "amc23", "--data-dir", "{bad}"],
            "amc23.jsonl:2: missing field 'answer'",
        ),
        (["--compare", "{bad}/nope.json"], "results file not found"),
        (["--benchmarks", "aime24"], "--model is required"),
    ],
)
def test_bad_input_is_named(args, message, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "amc23.jsonl").write_text('{"problem": "p", "answer": "1"}\n{"problem": "q"}\n')
    args = [a.format(model=tiny_model_dir, bad=tmp_path) for a in args]
    assert main(["eval", *args, "--output-dir", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_eval_of_a_folder_without_a_model_is_a_named_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "--model", str(empty), "--benchmarks", "aime24", "--data-dir", str(tmp_path)]) == 2
    assert "holds no model: no config.json and no tokenizer files" in capsys.readouterr().err
    from ktae.integrations.trl.tiny import build_tokenizer

    build_tokenizer().save_pretrained(empty)  # a tokenizer alone is not a model either
    assert main(["eval", "--model", str(empty), "--benchmarks", "aime24", "--data-dir", str(tmp_path)]) == 2
    assert "has no config.json: it holds a tokenizer, not a model" in capsys.readouterr().err
