"""Evaluation on the five math benchmarks (the paper's protocol): ``ktae eval``."""

from ktae.evaluation.generation import Generation, TransformersGenerator, VLLMGenerator, make_generator, select_backend
from ktae.evaluation.harness import EvalSettings, evaluate, score_benchmark, summarize
from ktae.evaluation.report import comparison_table, load_reference_rows, load_results, results_table

__all__ = [
    "EvalSettings",
    "Generation",
    "TransformersGenerator",
    "VLLMGenerator",
    "comparison_table",
    "evaluate",
    "load_reference_rows",
    "load_results",
    "make_generator",
    "results_table",
    "score_benchmark",
    "select_backend",
    "summarize",
]
