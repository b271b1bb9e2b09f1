# Shared part of the paper's verl runs (sourced by grpo.sh and dapo.sh; settings: docs/recipes.md).
# Usage of those scripts: <script> MODEL ESTIMATOR [verl overrides...]
#   MODEL: 1.5b | 7b (Qwen2.5-Math base models), ESTIMATOR: ktae | grpo (the baseline).
# Environment: MODEL_PATH (hub id or local dir), DATA_DIR (from prepare_data.sh), NNODES, GPUS_PER_NODE,
# ROLLOUT (vllm | sglang), LOGGER (verl's trainer.logger list), RUN_ROOT (checkpoints and rollout dumps).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 1.5b|7b ktae|grpo [verl overrides...]" >&2
    exit 2
fi
MODEL_SIZE=$1
ESTIMATOR=$2
shift 2

case "$MODEL_SIZE" in
    1.5b) MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-Math-1.5B}; ROLLOUT_TP=1; TOKENS_PER_GPU=24576 ;;
    7b) MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-Math-7B}; ROLLOUT_TP=2; TOKENS_PER_GPU=16384 ;;
    *) echo "MODEL must be 1.5b or 7b, got '$MODEL_SIZE'" >&2; exit 2 ;;
esac
case "$ESTIMATOR" in
    ktae | grpo) ;;
    *) echo "ESTIMATOR must be ktae or grpo, got '$ESTIMATOR'" >&2; exit 2 ;;
esac

DATA_DIR=${DATA_DIR:-$HOME/data/ktae-math}
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
ROLLOUT=${ROLLOUT:-vllm}
LOGGER=${LOGGER:-"['console','tensorboard']"}
RUN_ROOT=${RUN_ROOT:-$PWD/runs/verl}
MAX_PROMPT_LENGTH=1024
MAX_RESPONSE_LENGTH=3072

# The paper's settings common to GRPO and DAPO, and the engine layout for one node of 8 GPUs.
COMMON_ARGS=(
    data.train_files="$DATA_DIR/train.parquet"
    data.val_files="$DATA_DIR/test.parquet"
    data.train_batch_size=1024
    data.max_prompt_length=$MAX_PROMPT_LENGTH
    data.max_response_length=$MAX_RESPONSE_LENGTH
    data.filter_overlong_prompts=True
    data.truncation=error
    actor_rollout_ref.model.path="$MODEL_PATH"
    actor_rollout_ref.model.use_remove_padding=True
    actor_rollout_ref.model.enable_gradient_checkpointing=True
    actor_rollout_ref.actor.optim.lr=1e-6
    actor_rollout_ref.actor.ppo_mini_batch_size=128
    actor_rollout_ref.actor.use_dynamic_bsz=True
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu=$TOKENS_PER_GPU
    actor_rollout_ref.actor.entropy_coeff=0
    actor_rollout_ref.rollout.name=$ROLLOUT
    actor_rollout_ref.rollout.n=16
    actor_rollout_ref.rollout.temperature=1.0
    actor_rollout_ref.rollout.top_p=1.0
    actor_rollout_ref.rollout.top_k=-1
    actor_rollout_ref.rollout.tensor_model_parallel_size=$ROLLOUT_TP
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6
    actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=$((2 * TOKENS_PER_GPU))
    actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=$((2 * TOKENS_PER_GPU))
    algorithm.adv_estimator=$ESTIMATOR
    algorithm.use_kl_in_reward=False
    reward.custom_reward_function.path=pkg://ktae.integrations.verl.reward
    trainer.total_epochs=20
    trainer.nnodes=$NNODES
    trainer.n_gpus_per_node=$GPUS_PER_NODE
    trainer.logger="$LOGGER"
    trainer.project_name=ktae-verl
    trainer.val_before_train=True
    trainer.test_freq=10
    trainer.save_freq=20
)
if [[ $ESTIMATOR == ktae ]]; then
    # The paper's KTAE weights (its scripts pass beta=2, which the released code ignores: 1 is what ran).
    COMMON_ARGS+=(algorithm.ktae.alpha=1 algorithm.ktae.beta_ig=1 algorithm.ktae.gamma_tf=1 algorithm.ktae.top=1)
fi
