#!/usr/bin/env bash
# GRPO (+KTAE) on MATH, the paper's settings: bash recipes/verl/grpo.sh 1.5b|7b ktae|grpo [overrides...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
NAME=${RUN_NAME:-grpo-${ESTIMATOR}-qwen2.5-math-${MODEL_SIZE}}  # RUN_NAME: a variant recipe's own name

exec python -m ktae.integrations.verl \
    "${COMMON_ARGS[@]}" \
    actor_rollout_ref.actor.use_kl_loss=True \
    actor_rollout_ref.actor.kl_loss_coef=0.001 \
    actor_rollout_ref.actor.kl_loss_type=low_var_kl \
    reward.custom_reward_function.name=compute_score \
    trainer.experiment_name="$NAME" \
    trainer.default_local_dir="$RUN_ROOT/$NAME/checkpoints" \
    "$@"
