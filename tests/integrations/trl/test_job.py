"""The `ktae train` job's options: one documented dataclass of job keys, the built-in jobs, recipes and overrides."""

import dataclasses
import json

import pytest

from ktae.data.synthetic import ArithmeticTask
from ktae.integrations.trl import KTAEGRPOConfig
from ktae.integrations.trl.job import (
    DEFAULT_JOB,
    JOB_KEYS,
    REAL_MODEL_JOB,
    JobArguments,
    finished_step,
    load_config,
    read_recipe,
    resolve_options,
)
from ktae.integrations.trl.warmstart import WarmStartConfig
from ktae.tiny import TinyModelConfig

SECTIONS = {"task_": ArithmeticTask, "tiny_": TinyModelConfig, "warm_start_": WarmStartConfig}


def test_every_job_key_is_documented_and_none_is_a_trainer_field():
    fields = dataclasses.fields(JobArguments)
    undocumented = [f.name for f in fields if not f.metadata.get("help")]
    assert undocumented == []
    assert {f.name for f in fields} == JOB_KEYS
    assert JOB_KEYS.isdisjoint(f.name for f in dataclasses.fields(KTAEGRPOConfig))


@pytest.mark.parametrize("prefix", sorted(SECTIONS))
def test_each_section_field_is_a_job_key_with_the_sections_default(prefix):
    section = SECTIONS[prefix]
    defaults = JobArguments()
    for field in dataclasses.fields(section):
        assert getattr(defaults, prefix + field.name) == field.default, field.name
    built = {"task_": defaults.task, "tiny_": defaults.tiny_model, "warm_start_": defaults.warm_start}[prefix]()
    assert built == section()


def test_options_are_converted_to_the_fields_types_and_trainer_keys_left_out():
    job = JobArguments.from_options(
        {"warm_start_learning_rate": "1e-3", "task_max_terms": 5.0, "learning_rate": 0.1, "keep_checkpoints": None}
    )
    assert job.warm_start().learning_rate == 1e-3  # YAML 1.1 reads 1e-3 as text
    assert job.task() == ArithmeticTask(max_terms=5) and job.keep_checkpoints is None
    with pytest.raises(ValueError, match=r"task_max_terms must be an integer, got 4\.5"):
        JobArguments.from_options({"task_max_terms": 4.5})
    with pytest.raises(ValueError, match="task_seed must be an integer >= 0"):
        JobArguments(task_seed=-1)
    with pytest.raises(ValueError, match="template must be a string, got None"):
        JobArguments.from_options({"template": None})


def test_counts_have_a_minimum_and_only_optional_ones_take_null():
    counts = {f.name: f.metadata["minimum"] for f in dataclasses.fields(JobArguments) if "minimum" in f.metadata}
    assert counts == {
        "max_train_samples": 1,
        "lora_r": 1,
        "lora_alpha": 1,
        "task_seed": 0,
        "task_train_size": 1,
        "task_eval_size": 1,
        "eval_accuracy_steps": 0,
        "keep_checkpoints": 1,
        "benchmark_eval_steps": 1,
        "benchmark_limit": 1,
        "benchmark_samples": 1,
        "benchmark_batch_size": 1,
        "intended_num_processes": 1,
    }
    assert JobArguments(keep_checkpoints=None, max_train_samples=None).keep_checkpoints is None
    with pytest.raises(ValueError, match=r"task_train_size must be an integer >= 1, got None"):
        JobArguments(task_train_size=None)
    with pytest.raises(ValueError, match=r"max_train_samples must be an integer >= 1 \(or null\), got True"):
        JobArguments(max_train_samples=True)


def test_lora_fields_build_trls_lora_config():
    from peft import LoraConfig

    assert JobArguments().peft_config() is None
    config = JobArguments(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules="q_proj, v_proj").peft_config()
    assert isinstance(config, LoraConfig) and (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.05)
    assert config.target_modules == {"q_proj", "v_proj"} and config.task_type == "CAUSAL_LM"
    assert JobArguments(use_peft=True, lora_target_modules=["all-linear"]).peft_config().target_modules == "all-linear"
    with pytest.raises(ValueError, match="use_dora set without use_peft=true"):
        JobArguments(use_dora=True)


def test_the_built_in_jobs_are_valid_options():
    options = resolve_options(DEFAULT_JOB)
    assert JobArguments.from_options(options).warm_start().max_steps == 1500
    real = resolve_options({**DEFAULT_JOB, **REAL_MODEL_JOB})
    assert JobArguments.from_options(real).task() == ArithmeticTask(min_terms=2, max_terms=2, operations="+-")


def test_a_recipe_may_hold_every_job_key(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path}\nbf16: false\ntask_max_terms: 5\nwarm_start_max_steps: 10\nreward: accuracy\n"
    )
    config, job = load_config(recipe, ["tiny_hidden_size=64"])
    assert isinstance(config, KTAEGRPOConfig)
    assert job == {"task_max_terms": 5, "warm_start_max_steps": 10, "reward": "accuracy", "tiny_hidden_size": 64}


def test_a_recipe_is_a_yaml_mapping(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        read_recipe(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ValueError, match="a recipe is a mapping of keys to values, got list"):
        read_recipe(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert read_recipe(tmp_path / "empty.yaml") == {}


def test_a_run_is_finished_by_its_newest_usable_checkpoint(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    def checkpoint(step, state):
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({"w": np.zeros(2, dtype=np.float32)}, str(folder / "model.safetensors"))
        (folder / "trainer_state.json").write_text(json.dumps(state))
        return folder

    assert finished_step(tmp_path, 3) is None  # no checkpoint yet
    checkpoint(3, {"global_step": 3, "max_steps": 3})
    assert finished_step(tmp_path, 3) == 3 and finished_step(tmp_path, -1) == 3 and finished_step(tmp_path, 4) is None
    newest = checkpoint(4, {"global_step": 4})  # no step count of its own: max_steps=-1 cannot tell
    assert finished_step(tmp_path, 4) == 4 and finished_step(tmp_path, -1) is None
    (newest / "model.safetensors").write_bytes(b"\0" * 7)  # damaged: the step-3 checkpoint decides
    assert finished_step(tmp_path, 4) is None and finished_step(tmp_path, 3) == 3
