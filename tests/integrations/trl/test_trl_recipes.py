"""recipes/*.yaml load into KTAEGRPOConfig with the paper's settings (docs/recipes.md)."""

import dataclasses
from pathlib import Path

import pytest

from ktae.integrations.trl import load_config
from ktae.integrations.trl.job import JobArguments, batch_report

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
NAMES = [
    f"qwen2.5-math-{size}-{algo}{ktae}"
    for size in ("1.5b", "7b")
    for algo in ("grpo", "dapo")
    for ktae in ("-ktae", "")
]


def load(name, tmp_path):
    # bf16 needs a GPU; everything else is validated as the recipe says.
    return load_config(RECIPES / f"{name}.yaml", [f"output_dir={tmp_path}", "bf16=false"])


# Recipes beyond the paper's: each is a paper recipe with a few fields changed.
VARIANTS = {
    "qwen2.5-math-1.5b-grpo-ktae-rloo-entropy": (
        "qwen2.5-math-1.5b-grpo-ktae",
        {"ktae_rollout_advantage": "rloo", "top_entropy_quantile": 0.2},
    ),
}


def test_every_recipe_is_listed():
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == sorted([*NAMES, *VARIANTS])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_recipes_compose_through_trls_config_checks(name, tmp_path):
    variant, job = load(name, tmp_path)  # KTAEGRPOConfig runs TRL's GRPOConfig checks and KTAE's
    paper_name, changed = VARIANTS[name]
    paper, paper_job = load(paper_name, tmp_path)
    differing = {
        f.name: getattr(variant, f.name)
        for f in dataclasses.fields(variant)
        if getattr(variant, f.name) != getattr(paper, f.name)
    }
    assert differing == changed and job == paper_job
    assert variant.ktae
    assert variant.ktae_config(ignore_token_ids=()).rollout_advantage == changed["ktae_rollout_advantage"]


@pytest.mark.parametrize("name", NAMES)
def test_recipe_has_the_paper_settings(name, tmp_path):
    config, job = load(name, tmp_path)
    size, algo = name.split("-")[2], name.split("-")[3]
    assert job["model_name_or_path"] == {"1.5b": "Qwen/Qwen2.5-Math-1.5B", "7b": "Qwen/Qwen2.5-Math-7B"}[size]
    assert (job["template"], job["dataset_name"]) == ("qwen_math", "DigitalLearningGmbH/MATH-lighteval")
    assert (config.algo, config.ktae) == (algo, name.endswith("-ktae"))
    assert config.num_generations == 16 and config.generation_batch_size // 16 == 1024  # prompts per step
    gpus = job["intended_num_processes"]  # the count the job checks a launch against
    assert gpus == 8
    assert config.per_device_train_batch_size * gpus * config.gradient_accumulation_steps // 16 == 128  # mini-batch
    assert batch_report(config, gpus, gpus) == [
        f"[ktae train] 8 process(es) x per_device_train_batch_size {config.per_device_train_batch_size} x "
        f"gradient_accumulation_steps {config.gradient_accumulation_steps} = 2048 rollouts per optimizer step "
        "(128 prompts x num_generations 16)"
    ]
    assert (config.learning_rate, config.max_grad_norm, config.temperature, config.top_p, config.top_k) == (
        1e-6,
        1.0,
        1.0,
        1.0,
        0,
    )
    assert (config.max_completion_length, config.vllm_max_model_length) == (3072, 1024 + 3072)
    assert config.use_vllm and config.num_train_epochs == 20 and config.loss_type == "dapo"
    # benchmarks during training, as the paper evaluates (greedy, the run's template and response limit)
    benchmarks = JobArguments.from_options(job).benchmark_settings(config, model=job["model_name_or_path"])
    assert (benchmarks.template, benchmarks.max_new_tokens, benchmarks.temperature, benchmarks.limit) == (
        "qwen_math",
        3072,
        0.0,
        100,
    )
    assert (job["benchmark_suites"], job["benchmark_eval_steps"], job["keep_best_checkpoint"]) == (
        "math500,amc23,aime24",
        20,
        True,
    )
    if config.ktae:
        ktae = config.ktae_config(ignore_token_ids=())
        assert (ktae.alpha, ktae.beta_ig, ktae.gamma_tf, ktae.top) == (1.0, 1.0, 1.0, 1.0)
    if algo == "grpo":
        assert config.beta == 0.001 and job["reward"] == "accuracy"
        assert not config.dynamic_sampling and config.overlong_buffer_length == 0
    else:
        assert (config.beta, config.epsilon, config.epsilon_high, job["reward"]) == (0.0, 0.2, 0.28, "dapo")
        assert config.dynamic_sampling and config.dynamic_sampling_metric == "correct"
        assert config.max_num_gen_batches * config.generation_batch_size == 10 * 2048 * 16  # the paper's 10 x 2048
        assert (config.overlong_buffer_length, config.overlong_penalty_factor) == (512, 1.0)


@pytest.mark.parametrize("name", [n for n in NAMES if n.endswith("-ktae")])
def test_the_run_without_ktae_differs_only_in_ktae(name, tmp_path):
    with_ktae, job_with = load(name, tmp_path)
    without, job_without = load(name.removesuffix("-ktae"), tmp_path)
    differing = {
        f.name for f in dataclasses.fields(with_ktae) if getattr(with_ktae, f.name) != getattr(without, f.name)
    }
    assert differing == {"ktae"} and job_with == job_without
