#!/usr/bin/env bash
# MATH training set and MATH-500 (validation) in verl's parquet format, for grpo.sh and dapo.sh.
# Usage: bash recipes/verl/prepare_data.sh [extra prepare_data options, e.g. --train path/to/math.jsonl]
# Environment: DATA_DIR (output, default ~/data/ktae-math), BENCHMARKS_DIR (folder of <suite>.jsonl;
# default: the suites shipped with ktae).
set -euo pipefail
DATA_DIR=${DATA_DIR:-$HOME/data/ktae-math}
exec python -m ktae.integrations.verl.prepare_data --output-dir "$DATA_DIR" \
    ${BENCHMARKS_DIR:+--benchmarks-dir "$BENCHMARKS_DIR"} --val math500 "$@"
