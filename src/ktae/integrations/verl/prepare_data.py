"""Write the MATH training set (and evaluation suites) in verl's parquet format.

    python -m ktae.integrations.verl.prepare_data --output-dir ~/data/ktae-math \\
        [--train DigitalLearningGmbH/MATH-lighteval | path/to/math_train.jsonl|.parquet] \\
        [--val math500 [aime24 ...]] [--benchmarks-dir DIR | --benchmarks-hub] [--template qwen_math]

Each row is what verl's RLHFDataset and reward managers read: ``data_source``, ``prompt`` (chat
messages; verl applies the tokenizer's chat template), ``ability``, ``reward_model`` (``style: rule``,
``ground_truth``: the answer, or the list of accepted answers) and ``extra_info`` (``split``, ``index``).
Training answers come from the last ``\\boxed{}`` of MATH's worked solutions (ktae.data.load_math_train).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from ktae.data import (
    MATH_TRAIN_HUB_ID,
    apply_template,
    get_template,
    load_benchmark,
    load_math_train,
    parse_benchmark_names,
)


def verl_rows(examples: list[dict], split: str, template: str) -> list[dict]:
    """verl rows of ``examples`` ({"data_source", "problem", "answer"}); answers all become lists when
    any is a list (a parquet column has one type; the reward accepts both)."""
    if not get_template(template).chat:
        raise ValueError(
            f"template {template!r} gives plain text, but verl applies the tokenizer's chat template to "
            "chat messages: choose a chat template (qwen_math, qwen_boxed)"
        )
    as_lists = any(isinstance(e["answer"], list) for e in examples)
    return [
        {
            "data_source": e["data_source"],
            "prompt": apply_template(e["problem"], template),
            "ability": "math",
            "reward_model": {
                "style": "rule",
                "ground_truth": (e["answer"] if isinstance(e["answer"], list) else [e["answer"]])
                if as_lists
                else e["answer"],
            },
            "extra_info": {"split": split, "index": index},
        }
        for index, e in enumerate(examples)
    ]


def write_parquet(rows: list[dict], path: Path) -> Path:
    """Write atomically (temporary file, then rename)."""
    import datasets

    if not rows:
        raise ValueError(f"no rows to write to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    datasets.Dataset.from_list(rows).to_parquet(str(tmp))
    os.replace(tmp, path)
    return path


def prepare(
    output_dir: Path,
    train: str = MATH_TRAIN_HUB_ID,
    val: Sequence[str] = ("math500",),
    benchmarks_dir: str | None = None,
    template: str = "qwen_math",
    limit: int | None = None,
    benchmarks_hub: bool = False,
) -> dict[str, Path]:
    """Write ``train.parquet`` (MATH train) and ``test.parquet`` (the ``val`` suites) under ``output_dir``.

    The suites come from the copies shipped with ktae, ``benchmarks_dir``, or (``benchmarks_hub``) the hub."""
    get_template(template)
    names = parse_benchmark_names(list(val)) if val else []
    math = load_math_train(train, template=template, limit=limit)
    train_examples = [
        {"data_source": "math", "problem": p, "answer": a} for p, a in zip(math["problem"], math["answer"])
    ]
    written = {"train": write_parquet(verl_rows(train_examples, "train", template), Path(output_dir) / "train.parquet")}
    if names:
        val_examples = [
            {"data_source": name, **example}
            for name in names
            for example in load_benchmark(name, data_dir=benchmarks_dir, limit=limit, hub=benchmarks_hub)
        ]
        written["test"] = write_parquet(verl_rows(val_examples, "test", template), Path(output_dir) / "test.parquet")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ktae.integrations.verl.prepare_data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output-dir", required=True, type=Path, help="folder for train.parquet and test.parquet")
    parser.add_argument(
        "--train",
        default=MATH_TRAIN_HUB_ID,
        help="MATH training set: hub id, or a .jsonl/.json/.parquet file with problem and solution",
    )
    parser.add_argument(
        "--val",
        nargs="*",
        default=["math500"],
        help="evaluation suites for test.parquet: math500 aime24 amc23 minerva olympiadbench (--val alone: none)",
    )
    parser.add_argument(
        "--benchmarks-dir", default=None, help="folder of <suite>.jsonl files (default: the suites shipped with ktae)"
    )
    parser.add_argument("--benchmarks-hub", action="store_true", help="load the suites from their hub datasets")
    parser.add_argument("--template", default="qwen_math", help="prompt template (a chat one: qwen_math, qwen_boxed)")
    parser.add_argument("--limit", type=int, default=None, help="keep the first N rows of each set (smoke tests)")
    args = parser.parse_args(argv)
    written = prepare(
        args.output_dir, args.train, args.val, args.benchmarks_dir, args.template, args.limit, args.benchmarks_hub
    )
    for split, path in written.items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
