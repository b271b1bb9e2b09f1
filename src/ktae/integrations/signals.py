"""What KTAE reports to experiment trackers at each step; one definition for the TRL and verl integrations.

Scalars (each framework's own metrics: TRL's ``_metrics``, verl's metrics dict):

- ``ktae/large_bonus_share``: share of the response tokens whose key-token bonus has |bonus| > ``LARGE_BONUS``.
- ``ktae/bonus_mean_correct``, ``ktae/bonus_mean_incorrect``: mean bonus over the response tokens of the
  correct (score > correct_threshold) and incorrect rollouts; NaN when the step has none.
- ``ktae/seconds``: wall time spent computing the bonus during the step.
- ``ktae/time_share``: ``ktae/seconds`` divided by the step's wall time (generation, scoring, the
  advantage step and the update included), the share of a step KTAE costs.

Table ``ktae/key_tokens``: the most credited and most blamed tokens of the step (mean key-token value
over the prompt groups where the token has a nonzero value), as a W&B / trackio table and as TensorBoard
text, through whichever of those loggers the run configured.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ktae.core.estimator import KeyTokenValues

LARGE_BONUS = 0.5
NUM_KEY_TOKENS = 10
KEY_TOKENS_TABLE = "ktae/key_tokens"
KEY_TOKEN_COLUMNS = ("kind", "rank", "token", "token_id", "bonus", "groups")


def bonus_sums(bonus: torch.Tensor, mask: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Sums behind the bonus metrics, to add up across processes before :func:`bonus_metrics`.

    bonus: [B, T] float; mask: [B, T] bool (response tokens); correct: [B] bool.
    Returns float64 [6]: large-bonus tokens, tokens, bonus sum and tokens of correct rollouts, same of incorrect.
    """
    mask = mask.bool()
    on_correct = correct.bool()[:, None] & mask
    on_incorrect = ~correct.bool()[:, None] & mask
    bonus = bonus.double()
    return torch.stack(
        [
            ((bonus.abs() > LARGE_BONUS) & mask).sum(),
            mask.sum(),
            (bonus * on_correct).sum(),
            on_correct.sum(),
            (bonus * on_incorrect).sum(),
            on_incorrect.sum(),
        ]
    ).double()


def bonus_metrics(sums: torch.Tensor) -> dict[str, float]:
    """The bonus metrics (``ktae/large_bonus_share``, ``ktae/bonus_mean_correct``, ``ktae/bonus_mean_incorrect``)
    from :func:`bonus_sums`."""
    large, tokens, on_correct, n_correct, on_incorrect, n_incorrect = sums.tolist()
    return {
        "ktae/large_bonus_share": large / tokens if tokens else 0.0,
        "ktae/bonus_mean_correct": on_correct / n_correct if n_correct else math.nan,
        "ktae/bonus_mean_incorrect": on_incorrect / n_incorrect if n_incorrect else math.nan,
    }


def top_key_tokens(
    values: KeyTokenValues, decode: Callable[[int], str], limit: int = NUM_KEY_TOKENS
) -> dict[str, list[dict]]:
    """The ``limit`` tokens with the highest and the lowest mean key-token value.

    The mean is over the (group, token) pairs with a nonzero value (groups with both correct and
    incorrect rollouts). Returns {"credited": [...], "blamed": [...]}, each entry {"token": decode(id),
    "token_id", "bonus": mean value, "groups": pairs averaged}, strongest first.
    """
    nonzero = values.value != 0
    tokens, inverse = torch.unique(values.token[nonzero].cpu(), return_inverse=True)
    count = torch.zeros(len(tokens), dtype=torch.float64).index_add_(
        0, inverse, torch.ones(len(inverse), dtype=torch.float64)
    )
    total = torch.zeros(len(tokens), dtype=torch.float64).index_add_(0, inverse, values.value[nonzero].cpu().double())
    mean = total / count.clamp(min=1)
    order = torch.argsort(mean, descending=True).tolist()

    def describe(indices: list[int]) -> list[dict]:
        return [
            {
                "token": decode(int(tokens[i])),
                "token_id": int(tokens[i]),
                "bonus": float(mean[i]),
                "groups": int(count[i]),
            }
            for i in indices
        ]

    credited = [i for i in order if mean[i] > 0][:limit]
    blamed = [i for i in reversed(order) if mean[i] < 0][:limit]
    return {"credited": describe(credited), "blamed": describe(blamed)}


def key_token_rows(key_tokens: dict[str, list[dict]]) -> list[list]:
    """Rows of the ``ktae/key_tokens`` table, in ``KEY_TOKEN_COLUMNS`` order."""
    return [
        [kind, rank, entry["token"], entry["token_id"], entry["bonus"], entry["groups"]]
        for kind in ("credited", "blamed")
        for rank, entry in enumerate(key_tokens[kind], start=1)
    ]


def key_token_markdown(key_tokens: dict[str, list[dict]], step: int) -> str:
    """The table as Markdown, for TensorBoard's text dashboard."""
    lines = [
        f"**Most credited and blamed tokens, step {step}**",
        "",
        "| " + " | ".join(KEY_TOKEN_COLUMNS) + " |",
    ]
    lines.append("|" + " --- |" * len(KEY_TOKEN_COLUMNS))
    for kind, rank, token, token_id, bonus, groups in key_token_rows(key_tokens):
        shown = token.replace("|", "\\|").replace("\n", "\\n") or " "
        lines.append(f"| {kind} | {rank} | `{shown}` | {token_id} | {bonus:+.4f} | {groups} |")
    return "\n".join(lines)


def log_key_token_table(
    key_tokens: dict[str, list[dict]],
    step: int,
    wandb=None,
    trackio=None,
    tensorboard=None,
    pass_step: bool = True,
) -> None:
    """Send the table to the trackers given: ``wandb`` / ``trackio`` modules (a Table from a DataFrame,
    as TRL logs its completions) and a TensorBoard ``SummaryWriter`` (Markdown text).

    ``pass_step=False`` leaves W&B / trackio on their own step counter (TRL's callbacks do not pass one).
    """
    if wandb is not None or trackio is not None:
        import pandas as pd

        frame = pd.DataFrame(key_token_rows(key_tokens), columns=list(KEY_TOKEN_COLUMNS))
        for backend in (wandb, trackio):
            if backend is not None:
                backend.log(
                    {KEY_TOKENS_TABLE: backend.Table(dataframe=frame)},
                    **({"step": step} if pass_step else {}),
                )
    if tensorboard is not None:
        tensorboard.add_text(KEY_TOKENS_TABLE, key_token_markdown(key_tokens, step), step)
