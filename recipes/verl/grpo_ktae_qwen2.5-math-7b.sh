#!/usr/bin/env bash
# GRPO+KTAE, Qwen2.5-Math-7B (the paper's run). Extra verl overrides pass through.
exec bash "$(dirname "${BASH_SOURCE[0]}")/grpo.sh" 7b ktae "$@"
