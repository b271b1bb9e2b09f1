"""KTAE keys in verl's real Hydra config, start-up validation, and the recipes parsed through Hydra."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import get_adv_estimator_fn

from ktae import KTAEConfig, compute_rollout_advantages
from ktae.integrations.verl import (
    KTAE_TRAINER_MODES,
    ktae_base_from_algorithm,
    ktae_config_from_algorithm,
    validate_ktae_run,
)
from ktae.integrations.verl.config import ktae_settings_from_config
from ktae.integrations.verl.main import PLUGIN_MODULE, prepare_config

# What verl's own validation needs on a CPU box with no recipe: micro-batching and a GPU layout.
RUNNABLE = [
    "actor_rollout_ref.actor.use_dynamic_bsz=True",
    "actor_rollout_ref.rollout.name=vllm",
    "data.train_batch_size=16",
    "actor_rollout_ref.actor.ppo_mini_batch_size=8",
]


def test_ktae_keys_compose_with_verls_config(compose):
    config = compose(
        [
            "algorithm.adv_estimator=ktae",
            "actor_rollout_ref.rollout.n=8",
            "algorithm.ktae.alpha=2",
            "algorithm.ktae.top=0.5",
            "algorithm.ktae.ignore_token_ids=[3,4]",
            "algorithm.ktae.base=rloo",
        ]
    )
    assert validate_ktae_run(config) == KTAEConfig(
        alpha=2.0, top=0.5, ignore_token_ids=(3, 4), rollout_advantage="none"
    )
    assert ktae_base_from_algorithm(config.algorithm) == "rloo"
    # verl's own sections are untouched by the KTAE config
    assert config.algorithm.norm_adv_by_std_in_grpo is True
    assert config.trainer.v1.trainer_mode == "sync"


def test_defaults_follow_the_tokenizer_and_the_papers_grpo_base(compose):
    config = compose(["algorithm.adv_estimator=ktae", "algorithm.norm_adv_by_std_in_grpo=False"])
    ktae = ktae_config_from_algorithm(config.algorithm, ignore_token_ids=(151643, 151645))
    assert ktae == KTAEConfig(ignore_token_ids=(151643, 151645), rollout_advantage="none")
    assert ktae_base_from_algorithm(config.algorithm) == "grpo"  # verl's grpo reads norm_adv_by_std_in_grpo


@pytest.mark.parametrize(
    "base",
    [
        "grpo",
        "grpo_vectorized",
        "rloo",
        "rloo_vectorized",
        "reinforce_plus_plus",
        "reinforce_plus_plus_baseline",
        "opo",
        "gpg",
        "grpo_passk",
    ],
)
def test_every_base_ktae_can_feed_passes_start_up(compose, base):
    config = compose(["algorithm.adv_estimator=ktae", "actor_rollout_ref.rollout.n=4", f"algorithm.ktae.base={base}"])
    assert validate_ktae_run(config) is not None


def test_a_plugins_estimator_named_in_the_run_is_registered_before_the_check(compose, tmp_path, monkeypatch):
    (tmp_path / "my_estimators.py").write_text(
        "from verl.trainer.ppo.core_algos import register_adv_est\n"
        "@register_adv_est('test_plugin_mean')\n"
        "def mean_baseline(token_level_rewards, response_mask, index, config=None, **kwargs):\n"
        "    raise NotImplementedError\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = compose(
        [
            "algorithm.adv_estimator=ktae",
            "actor_rollout_ref.rollout.n=4",
            "algorithm.ktae.base=test_plugin_mean",
            "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=my_estimators",
        ]
    )
    assert validate_ktae_run(config) is not None


def test_other_estimators_ignore_the_ktae_section(compose):
    assert validate_ktae_run(compose(["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=1"])) is None


def test_unknown_ktae_key_fails_at_start_up(compose):
    config = compose(["algorithm.adv_estimator=ktae", "actor_rollout_ref.rollout.n=4", "+algorithm.ktae.betaa=2"])
    with pytest.raises(ValueError, match="betaa"):
        validate_ktae_run(config)


def test_unknown_ktae_key_without_plus_is_refused_by_hydra(compose):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"algorithm\.ktae\.betaa"):
        compose(["algorithm.ktae.betaa=2"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["actor_rollout_ref.rollout.n=1"], "actor_rollout_ref.rollout.n=1"),
        (["actor_rollout_ref.rollout.n=4", "algorithm.ktae.top=-1"], "top must be >= 0"),
        (
            ["actor_rollout_ref.rollout.n=4", "algorithm.ktae.base=ppo"],
            "verl has no advantage estimator 'ppo'; registered: gae, grpo, ",
        ),
        (["actor_rollout_ref.rollout.n=4", "algorithm.ktae.base=ktae"], "base=ktae"),
        (
            ["actor_rollout_ref.rollout.n=4", "algorithm.ktae.base=remax"],
            "verl's remax estimator needs reward_baselines, which KTAE cannot supply",
        ),
        (["actor_rollout_ref.rollout.n=4", "algorithm.ktae.base=gae"], "needs values, gamma, lam"),
        (
            ["actor_rollout_ref.rollout.n=4", "algorithm.ktae.base=optimal_token_baseline"],
            "needs old_log_probs, sum_pi_squared, rollout_is_weights",
        ),
        (
            ["actor_rollout_ref.rollout.n=4", "+algorithm.ktae.rollout_advantage=rloo"],
            "algorithm.ktae.rollout_advantage does not apply to verl",
        ),
        (["actor_rollout_ref.rollout.n=4", "trainer.v1.trainer_mode=fancy"], "trainer_mode"),
    ],
)
def test_bad_ktae_settings_fail_with_a_clear_message(compose, overrides, message):
    config = compose(["algorithm.adv_estimator=ktae", *overrides])
    with pytest.raises(ValueError, match=message.replace("[", "\\[")):
        validate_ktae_run(config)


def test_prepare_config_points_the_run_at_the_ktae_trainer(compose):
    for mode, ktae_mode in KTAE_TRAINER_MODES.items():
        config = compose(
            [
                "algorithm.adv_estimator=ktae",
                "actor_rollout_ref.rollout.n=4",
                f"trainer.v1.trainer_mode={mode}",
                *RUNNABLE,
            ]
        )
        prepare_config(config)
        assert config.trainer.v1.trainer_mode == ktae_mode
        env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars
        assert env_vars.VERL_USE_EXTERNAL_MODULES == PLUGIN_MODULE
    baseline = compose(
        [
            "algorithm.adv_estimator=grpo",
            "actor_rollout_ref.rollout.n=4",
            *RUNNABLE,
            "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=mine",
        ]
    )
    prepare_config(baseline)
    assert baseline.trainer.v1.trainer_mode == "sync"
    assert f"mine,{PLUGIN_MODULE}" == baseline.ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES
    # a baseline that logs its rollouts runs the KTAE trainer, whose advantage step for it is verl's
    logged = compose(
        ["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=4", *RUNNABLE, "trainer.ktae_rollouts_dir=/r"]
    )
    prepare_config(logged)
    assert logged.trainer.v1.trainer_mode == "ktae_sync"


def test_launcher_refuses_verls_legacy_trainer(compose):
    config = compose(["algorithm.adv_estimator=grpo", "trainer.use_v1=False", *RUNNABLE])
    with pytest.raises(ValueError, match=r"remove trainer\.use_v1=False"):
        prepare_config(config)


def test_prepare_config_runs_verls_own_checks(compose):
    config = compose(["algorithm.adv_estimator=ktae", "actor_rollout_ref.rollout.n=4"])  # no micro-batch size
    with pytest.raises(Exception, match="ppo_micro_batch_size"):  # verl raises from hydra's instantiate
        prepare_config(config)


# --- the recipes and the launcher, as users run them -------------------------------------------

RECIPES = {
    "grpo_ktae_qwen2.5-math-1.5b.sh": ("ktae", "Qwen/Qwen2.5-Math-1.5B"),
    "grpo_baseline_qwen2.5-math-7b.sh": ("grpo", "Qwen/Qwen2.5-Math-7B"),
    "dapo_ktae_qwen2.5-math-7b.sh": ("ktae", "Qwen/Qwen2.5-Math-7B"),
    "dapo_baseline_qwen2.5-math-1.5b.sh": ("grpo", "Qwen/Qwen2.5-Math-1.5B"),
    "rloo_ktae_qwen2.5-math-1.5b.sh": ("ktae", "Qwen/Qwen2.5-Math-1.5B"),
}


def recipe_overrides(repo_root, tmp_path, recipe: str) -> list[str]:
    """The verl overrides a recipe script passes to `python -m ktae.integrations.verl` (a stand-in
    `python` first on PATH prints its arguments instead of training)."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nprintf '%s\\0' \"$@\"\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "DATA_DIR": "/data/math"}
    env.pop("MODEL_PATH", None)
    out = subprocess.run(
        ["bash", str(repo_root / "recipes" / "verl" / recipe)],
        env=env,
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    args = out.split("\0")[:-1]
    assert args[:2] == ["-m", "ktae.integrations.verl"]
    return args[2:]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_parses_through_verls_hydra_config(compose, repo_root, tmp_path, recipe):
    config = compose(recipe_overrides(repo_root, tmp_path, recipe))
    estimator, model = RECIPES[recipe]
    # The settings GRPO and DAPO share in the paper (docs/recipes.md)
    assert config.algorithm.adv_estimator == estimator
    assert config.actor_rollout_ref.model.path == model
    assert config.data.train_batch_size == 1024
    assert config.actor_rollout_ref.rollout.n == 16
    assert config.actor_rollout_ref.actor.ppo_mini_batch_size == 128
    assert config.actor_rollout_ref.actor.optim.lr == 1e-6
    assert (config.data.max_prompt_length, config.data.max_response_length) == (1024, 3072)
    assert config.actor_rollout_ref.rollout.temperature == 1.0
    assert config.trainer.total_epochs == 20
    assert config.data.train_files == "/data/math/train.parquet"
    assert config.reward.custom_reward_function.path == "pkg://ktae.integrations.verl.reward"
    actor = config.actor_rollout_ref.actor
    if recipe.startswith("dapo"):
        assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.loss_agg_mode) == (0.2, 0.28, "token-mean")
        assert actor.optim.clip_grad == 1.0
        assert actor.use_kl_loss is False and config.algorithm.use_kl_in_reward is False
        assert config.algorithm.filter_groups.enable and config.algorithm.filter_groups.metric == "acc"
        assert config.reward.reward_manager.name == "dapo"
        assert config.reward.custom_reward_function.name == "compute_dapo_score"
        overlong = config.reward.reward_kwargs.overlong_buffer_cfg
        assert (overlong.enable, overlong.len, overlong.penalty_factor) == (True, 512, 1.0)
        assert config.reward.reward_kwargs.max_resp_len == 3072
    else:
        assert (actor.use_kl_loss, actor.kl_loss_coef, actor.kl_loss_type) == (True, 0.001, "low_var_kl")
        assert actor.entropy_coeff == 0 and config.algorithm.use_kl_in_reward is False
        assert config.reward.custom_reward_function.name == "compute_score"
    ktae = validate_ktae_run(config)
    assert (ktae is None) == (estimator != "ktae")
    if ktae is not None:
        assert (ktae.alpha, ktae.beta_ig, ktae.gamma_tf, ktae.top) == (1.0, 1.0, 1.0, 1.0)
        assert ktae_base_from_algorithm(config.algorithm) == ("rloo" if recipe.startswith("rloo") else "grpo")
    assert config.trainer.experiment_name == recipe.rsplit(".sh", 1)[0].replace("_", "-").replace("baseline", "grpo")
    prepare_config(config)  # verl's own start-up checks pass on the recipe as written


def test_recipe_refuses_an_unknown_model(repo_root):
    result = subprocess.run(
        ["bash", str(repo_root / "recipes" / "verl" / "grpo.sh"), "3b", "ktae"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "MODEL must be 1.5b or 7b" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "verl_name", "norm"),
    [
        (["algorithm.adv_estimator=ktae"], "grpo", True),
        (["algorithm.adv_estimator=ktae", "algorithm.norm_adv_by_std_in_grpo=False"], "grpo", False),
        (["algorithm.adv_estimator=ktae", "algorithm.ktae.base=grpo_vectorized"], "grpo_vectorized", True),
        (["algorithm.adv_estimator=ktae", "algorithm.ktae.base=rloo"], "rloo", True),
        (["algorithm.adv_estimator=grpo"], "grpo", True),
        (["algorithm.adv_estimator=grpo", "algorithm.norm_adv_by_std_in_grpo=False"], "grpo", False),
        (["algorithm.adv_estimator=rloo_vectorized"], "rloo_vectorized", True),
    ],
)
def test_a_runs_settings_name_the_ktae_base_equal_to_verls(compose, overrides, verl_name, norm):
    """The settings a verl run logs beside its rollouts recompute verl's own rollout-level advantage."""
    config = compose([*overrides, "algorithm.ktae.alpha=0.5"])
    settings = ktae_settings_from_config(config, ignore_token_ids=(7,))
    assert settings.ktae == (config.algorithm.adv_estimator == "ktae") and settings.exact_base
    assert settings.estimator.alpha == 0.5 and settings.estimator.ignore_token_ids == (7,)
    # groups of 2 to 5 rollouts, shuffled, one of them uniform (verl's batches hold rollout.n >= 2 of each
    # prompt under KTAE; a group of one is where the two differ, see KTAE_BASE_OF_VERL)
    generator = torch.Generator().manual_seed(0)
    groups = torch.tensor([0] * 2 + [1] * 3 + [2] * 4 + [3] * 5 + [4] * 4 + [5] * 6)
    groups = groups[torch.randperm(24, generator=generator)]
    scores = torch.randint(0, 3, (24,), generator=generator).float()
    scores[groups == 2] = 1.0
    mask = torch.ones(24, 5)
    verl_advantages, _ = get_adv_estimator_fn(verl_name)(
        token_level_rewards=torch.nn.functional.pad(scores[:, None], (0, 4)),
        response_mask=mask,
        index=np.array([f"uid-{g}" for g in groups.tolist()], dtype=object),
        norm_adv_by_std_in_grpo=norm,
        config=None,
    )
    ours = compute_rollout_advantages(scores, groups, settings.estimator.rollout_advantage, settings.estimator.epsilon)
    torch.testing.assert_close(verl_advantages[:, 0], ours, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["reinforce_plus_plus", "gpg", "opo"])
def test_a_base_with_no_ktae_equal_is_said_so(compose, name):
    for overrides in (
        ["algorithm.adv_estimator=ktae", f"algorithm.ktae.base={name}"],
        [f"algorithm.adv_estimator={name}"],
    ):
        settings = ktae_settings_from_config(compose(overrides))
        assert not settings.exact_base and settings.rollout_advantage == f"verl's {name}"
        assert settings.estimator.rollout_advantage == "grpo"  # the nearest, which reports say they show
