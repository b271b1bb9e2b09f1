#!/usr/bin/env bash
# DAPO+KTAE, Qwen2.5-Math-1.5B (the paper's run). Extra verl overrides pass through.
exec bash "$(dirname "${BASH_SOURCE[0]}")/dapo.sh" 1.5b ktae "$@"
