"""Math prompt datasets, the five evaluation suites and prompt templates.

The synthetic arithmetic task is ``ktae.data.synthetic`` (imported on demand, not here).
"""

from ktae.data.benchmarks import BENCHMARKS, load_benchmark, parse_benchmark_names
from ktae.data.loading import MATH_TRAIN_HUB_ID, load_math_train, load_prompt_dataset, read_records
from ktae.data.templates import TEMPLATES, PromptTemplate, apply_template, get_template, render_prompt

__all__ = [
    "BENCHMARKS",
    "MATH_TRAIN_HUB_ID",
    "TEMPLATES",
    "PromptTemplate",
    "apply_template",
    "get_template",
    "load_benchmark",
    "load_math_train",
    "load_prompt_dataset",
    "parse_benchmark_names",
    "read_records",
    "render_prompt",
]
