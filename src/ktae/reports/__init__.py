"""Reports people can look at: key-token HTML reports and training curves (docs/reports.md).

- ``build_report(rollouts, "report.html")``: one self-contained page; every token coloured by
  its key-token value, recomputed with ``ktae.compute_key_token_values``.
- ``build_run_report([run_a, run_b], "report/")``: curves of the runs on one plot, key tokens
  over steps, one key-token page per logged step.
- ``plot_runs(run_dirs, "curves.png")``: the training curves (PNG).
"""

from ktae.reports.builders import build_report, build_run_report, run_ktae_config
from ktae.reports.colours import DivergingScale
from ktae.reports.curves import plot_runs, read_metrics
from ktae.reports.keytokens import KeyTokenAnalysis, analyse
from ktae.reports.rollouts import load_rollouts, parse_rollout, tokenize_rollouts
from ktae.reports.text import merge_pieces

__all__ = [
    "DivergingScale",
    "KeyTokenAnalysis",
    "analyse",
    "build_report",
    "build_run_report",
    "load_rollouts",
    "merge_pieces",
    "parse_rollout",
    "plot_runs",
    "read_metrics",
    "run_ktae_config",
    "tokenize_rollouts",
]
