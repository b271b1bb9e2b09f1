"""Evaluation on the five math benchmarks (the paper's protocol): ``ktae eval``."""

from ktae.evaluation.eval_folder import write_results
from ktae.evaluation.generation import (
    Generation,
    Sampling,
    TransformersGenerator,
    VLLMGenerator,
    make_generator,
    select_backend,
)
from ktae.evaluation.harness import EvalSettings, evaluate, problem_records, score_benchmark, summarize
from ktae.evaluation.metrics import bootstrap_ci, paired_comparison, pass_at_k
from ktae.evaluation.report import (
    comparison_table,
    load_problem_records,
    load_reference_rows,
    load_results,
    paired_comparison_table,
    results_table,
)

__all__ = [
    "EvalSettings",
    "Generation",
    "Sampling",
    "TransformersGenerator",
    "VLLMGenerator",
    "bootstrap_ci",
    "comparison_table",
    "evaluate",
    "load_problem_records",
    "load_reference_rows",
    "load_results",
    "make_generator",
    "paired_comparison",
    "paired_comparison_table",
    "pass_at_k",
    "problem_records",
    "results_table",
    "score_benchmark",
    "select_backend",
    "summarize",
    "write_results",
]
