#!/usr/bin/env bash
# DAPO (+KTAE) on MATH, the paper's settings: bash recipes/verl/dapo.sh 1.5b|7b ktae|grpo [overrides...]
# Dynamic sampling keeps only groups with both correct and wrong rollouts (filter_groups on "acc");
# verl 0.9.1 refills the batch prompt by prompt with up to max_inflight_gen_batches train batches of
# prompts in flight (2 = the paper's generation batch of 2048 prompts).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
NAME=dapo-${ESTIMATOR}-qwen2.5-math-${MODEL_SIZE}
OVERLONG_BUFFER=512

exec python -m ktae.integrations.verl \
    "${COMMON_ARGS[@]}" \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.actor.clip_ratio_low=0.2 \
    actor_rollout_ref.actor.clip_ratio_high=0.28 \
    actor_rollout_ref.actor.loss_agg_mode=token-mean \
    actor_rollout_ref.actor.optim.clip_grad=1.0 \
    algorithm.filter_groups.enable=True \
    algorithm.filter_groups.metric=acc \
    algorithm.filter_groups.max_inflight_gen_batches=2 \
    reward.reward_manager.name=dapo \
    reward.custom_reward_function.name=compute_dapo_score \
    +reward.reward_kwargs.max_resp_len=$MAX_RESPONSE_LENGTH \
    +reward.reward_kwargs.overlong_buffer_cfg.enable=True \
    +reward.reward_kwargs.overlong_buffer_cfg.len=$OVERLONG_BUFFER \
    +reward.reward_kwargs.overlong_buffer_cfg.penalty_factor=1.0 \
    +reward.reward_kwargs.overlong_buffer_cfg.log=False \
    trainer.experiment_name="$NAME" \
    trainer.default_local_dir="$RUN_ROOT/$NAME/checkpoints" \
    "$@"
