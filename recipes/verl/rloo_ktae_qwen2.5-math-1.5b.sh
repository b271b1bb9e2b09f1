#!/usr/bin/env bash
# KTAE over verl's RLOO estimator, Qwen2.5-Math-1.5B (not a run of the paper): the GRPO+KTAE recipe with
# algorithm.ktae.base=rloo, so each token's advantage is RLOO's leave-one-out advantage (no std division)
# plus KTAE's key-token bonus. Extra verl overrides pass through.
RUN_NAME=rloo-ktae-qwen2.5-math-1.5b exec bash "$(dirname "${BASH_SOURCE[0]}")/grpo.sh" 1.5b ktae \
    algorithm.ktae.base=rloo "$@"
