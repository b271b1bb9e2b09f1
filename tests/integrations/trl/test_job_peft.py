"""``ktae train use_peft=true``: LoRA checkpoints (the adapter, in safetensors), resume, the merged model, and
``ktae eval --model`` on an adapter checkpoint, also after the run folder moved."""

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tests.cli.test_train import SMALL

from ktae.cli import main
from ktae.integrations.trl.job import JobArguments
from ktae.models import load_causal_lm, resolve_model_source

LORA = ["use_peft=true", "lora_r=4", "lora_alpha=8", "lora_target_modules=q_proj,v_proj"]
# A tiny model a few SFT steps old solves nothing, so all its rewards would tie: DAPO's overlong penalty makes
# the scores of a group differ (responses run into the limit), so the adapter trains from step 1.
SIGNAL = ["algo=dapo", "dynamic_sampling=false", "warmup_steps=0", "learning_rate=0.3"]


def _summary(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out[out.rindex("\n{\n") :])


def _eval(model, data, out) -> dict:
    command = ["eval", "--model", str(model), "--benchmarks", "aime24", "--data-dir", str(data)]
    assert main([*command, "--max-new-tokens", "8", "--output-dir", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


def test_lora_run_saves_adapters_resumes_merges_and_evaluates(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), *SMALL, *LORA, *SIGNAL, "max_steps=1", "save_steps=1"]) == 0
    assert _summary(capsys)["checkpoints"] == ["checkpoint-1"]
    config = JobArguments.from_options(yaml.safe_load((run / "config.yaml").read_text()))
    assert config.use_peft and config.lora_target_modules == ["q_proj", "v_proj"]

    # Resume from the LoRA checkpoint: the adapter, optimizer and step come back; step 2 trains on.
    assert main(["train", "--resume", str(run), "max_steps=2"]) == 0
    summary = _summary(capsys)
    assert summary["steps"] == 2 and summary["checkpoints"] == ["checkpoint-1", "checkpoint-2"]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    checkpoint = run / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    weights = load_file(checkpoint / "adapter_model.safetensors")
    assert weights and all(".lora_A." in name or ".lora_B." in name for name in weights)
    first = load_file(run / "checkpoints" / "checkpoint-1" / "adapter_model.safetensors")
    assert any(name for name in first if ".lora_B." in name and first[name].abs().sum() > 0)  # step 1 trained B
    assert any(not torch.equal(weights[name], first[name]) for name in weights)  # and step 2 trained on from there
    # from checkpoint-1's adapter: the same two steps in one go end at the same adapter
    whole = tmp_path / "whole"
    assert main(["train", "--output-dir", str(whole), *SMALL, *LORA, *SIGNAL, "max_steps=2", "save_steps=2"]) == 0
    uninterrupted = load_file(whole / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors")
    assert all(torch.allclose(weights[name], uninterrupted[name], atol=1e-6) for name in weights)
    adapter_config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str((run / "warm_start").resolve())  # absolute: any cwd

    # The merged model, written at the end: the last adapter on its base.
    assert summary["merged_model"] == str(run / "merged")
    merged = load_causal_lm(run / "merged").state_dict()
    in_memory = load_causal_lm(checkpoint).state_dict()  # ktae.models merges an adapter on loading
    assert merged.keys() == in_memory.keys() and all(torch.equal(merged[k], in_memory[k]) for k in merged)

    data = tmp_path / "bench"
    data.mkdir()
    problems = [{"problem": "1+2=", "answer": "3"}, {"problem": "4+4=", "answer": "8"}]
    (data / "aime24.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    results = _eval(checkpoint, data, tmp_path / "eval-adapter")
    assert results["num_examples"] == {"aime24": 2}
    # The merged model answers exactly as the adapter on its base does.
    assert _eval(run / "merged", data, tmp_path / "eval-merged")["per_problem"] == results["per_problem"]

    # The run folder moved (the recorded base is gone): its own warm_start/ is the base.
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    source = resolve_model_source(moved / "checkpoints" / "checkpoint-2")
    assert source.path == str((moved / "warm_start").resolve()) and source.adapter is not None
    assert (
        _eval(moved / "checkpoints" / "checkpoint-2", data, tmp_path / "eval-moved")["per_problem"]
        == (results["per_problem"])
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("lora_r=8", "lora_r set without use_peft=true"),
        ("lora_dropout=1.5", "lora_dropout must be in [0, 1)"),
        ("lora_target_modules=[1]", "lora_target_modules must be a list of module names"),
    ],
)
def test_bad_lora_options_are_named_before_any_work(tmp_path, capsys, override, message):
    assert main(["train", "--output-dir", str(tmp_path / "run"), *SMALL, override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "warm_start").exists()


def test_lora_modules_the_model_lacks_are_refused_before_rl(tmp_path, capsys):
    command = ["train", "--output-dir", str(tmp_path / "run"), *SMALL, "warm_start_max_steps=0"]
    assert main([*command, "use_peft=true", "lora_target_modules=no_such_proj"]) == 2
    assert "no_such_proj" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.yaml").exists()
