import dataclasses

import pytest
from trl_tiny import config_options

from ktae import KTAEConfig
from ktae.integrations.trl import KTAEGRPOConfig, load_config, parse_overrides


def make(tmp_path, **overrides):
    return KTAEGRPOConfig(**config_options(tmp_path, **overrides))


def test_algo_fills_in_the_paper_defaults(tmp_path):
    grpo = make(tmp_path, algo="grpo", max_completion_length=3072)
    assert (grpo.beta, grpo.epsilon_high, grpo.dynamic_sampling, grpo.overlong_buffer_length) == (0.001, None, False, 0)
    dapo = make(tmp_path, algo="dapo", max_completion_length=3072)
    assert (dapo.beta, dapo.epsilon_high, dapo.dynamic_sampling, dapo.overlong_buffer_length) == (0.0, 0.28, True, 512)
    assert grpo.loss_type == dapo.loss_type == "dapo"  # token-mean over the batch


def test_values_you_set_win_over_the_algo_defaults(tmp_path):
    config = make(tmp_path, algo="dapo", beta=0.01, epsilon_high=0.3, dynamic_sampling=False, overlong_buffer_length=0)
    assert (config.beta, config.epsilon_high, config.dynamic_sampling, config.overlong_buffer_length) == (
        0.01,
        0.3,
        False,
        0,
    )


def test_every_ktae_option_has_a_field():
    fields = {f.name for f in dataclasses.fields(KTAEGRPOConfig)}
    assert {f"ktae_{f.name}" for f in dataclasses.fields(KTAEConfig)} <= fields


def test_ktae_config_carries_every_field(tmp_path):
    config = make(
        tmp_path,
        ktae_alpha=2.0,
        ktae_beta_ig=0.5,
        ktae_gamma_tf=0.0,
        ktae_top=0.7,
        ktae_correct_threshold=0.5,
        ktae_rollout_advantage="rloo",
        ktae_epsilon=1e-4,
    )
    assert config.ktae_config(ignore_token_ids=[3, 1]) == KTAEConfig(
        alpha=2.0,
        beta_ig=0.5,
        gamma_tf=0.0,
        top=0.7,
        correct_threshold=0.5,
        ignore_token_ids=(1, 3),
        rollout_advantage="rloo",
        epsilon=1e-4,
    )
    assert make(tmp_path, ktae_ignore_token_ids=[9]).ktae_config(ignore_token_ids=[1]).ignore_token_ids == (9,)
    # unset base: TRL supplies the rollout-level part, KTAE the bonus alone
    assert make(tmp_path).ktae_config(ignore_token_ids=[]).rollout_advantage == "none"


@pytest.mark.parametrize(
    "options",
    [
        {"scale_rewards": "batch"},
        {"scale_rewards": "none"},
        {"multi_objective_aggregation": "normalize_then_sum", "reward_weights": [1.0, 0.5]},
        {"loss_type": "luspo", "importance_sampling_level": "sequence", "top_entropy_quantile": 0.2},
    ],
)
def test_trls_own_rollout_advantage_settings_work_with_ktae(tmp_path, options):
    assert make(tmp_path, **options).ktae


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_generations": 1, "per_device_train_batch_size": 1}, "num_generations must be >= 2 with ktae on"),
        ({"algo": "ppo"}, "unknown algo 'ppo'"),
        ({"num_generations": None}, "num_generations must be >= 1, got None"),
        ({"ktae_alpha": -1.0}, "alpha must be >= 0"),
        # refused when the config is built, not at step 1 after config.yaml is written
        ({"ktae_ignore_token_ids": [2**70]}, "ignore_token_ids must be int64 token ids"),
        ({"ktae_rollout_advantage": "mean"}, "unknown rollout_advantage"),
        ({"dynamic_sampling_metric": "acc"}, "unknown dynamic_sampling_metric"),
        ({"max_num_gen_batches": 0}, "max_num_gen_batches must be >= 1"),
        ({"overlong_buffer_length": 9}, "overlong_buffer_length must be in"),
        (
            {"scale_rewards": "batch", "ktae_rollout_advantage": "rloo"},
            "ktae_rollout_advantage='rloo' replaces TRL's rollout-level advantage, so scale_rewards='batch' would",
        ),
        (
            {"multi_objective_aggregation": "normalize_then_sum", "ktae_rollout_advantage": "grpo"},
            "so multi_objective_aggregation='normalize_then_sum' would have no effect",
        ),
    ],
)
def test_bad_values_raise_a_named_error(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make(tmp_path, **overrides)


def test_load_config_reads_yaml_and_overrides(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "algo: dapo\nmodel_name_or_path: Qwen/Qwen2.5-Math-1.5B\nlearning_rate: 1e-6\n"
        f"output_dir: {tmp_path}\nuse_cpu: true\nreport_to: none\nnum_generations: 4\n"
        "per_device_train_batch_size: 4\nktae_alpha: 2\n"
    )
    config, job = load_config(recipe, ["ktae_beta_ig=3", "ktae=false", "reward=dapo", "max_completion_length=64"])
    assert config.learning_rate == 1e-6  # YAML reads 1e-6 as a string; the field's type converts it
    assert (config.algo, config.ktae, config.ktae_alpha, config.ktae_beta_ig) == ("dapo", False, 2.0, 3.0)
    assert config.overlong_buffer_length == 64 * 512 // 3072
    assert job == {"model_name_or_path": "Qwen/Qwen2.5-Math-1.5B", "reward": "dapo"}


def test_load_config_names_unknown_keys_and_bad_types(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['ktae_alpah'\]"):
        load_config(None, [f"output_dir={tmp_path}", "ktae_alpah=2"])
    with pytest.raises(ValueError, match="learning_rate must be a number, got 'fast'"):
        load_config(None, [f"output_dir={tmp_path}", "learning_rate=fast"])
    with pytest.raises(ValueError, match="ktae must be true or false"):
        load_config(None, [f"output_dir={tmp_path}", "ktae=maybe"])
    with pytest.raises(ValueError, match="not of the form key=value"):
        parse_overrides(["ktae_alpha"])
    with pytest.raises(ValueError, match=r"override max_steps: expected ',' or '\]', but got '<stream end>'"):
        parse_overrides(["max_steps=[1"])
