"""What KTAE reports to experiment trackers at each step; one definition for the TRL and verl integrations.

Scalars (each framework's own metrics: TRL's ``_metrics``, verl's metrics dict):

- ``ktae/large_bonus_share``: share of the response tokens whose key-token bonus has |bonus| > ``LARGE_BONUS``.
- ``ktae/bonus_mean_correct``, ``ktae/bonus_mean_incorrect``: mean bonus over the response tokens of the
  correct (score > correct_threshold) and incorrect rollouts; left out of a step that has none (a tracker
  would plot NaN as a gap at best, and some drop it with a warning).
- ``ktae/seconds``: wall time spent computing the bonus during the step.
- ``ktae/time_share``: ``ktae/seconds`` divided by the step's wall time (generation, scoring, the
  advantage step and the update included), the share of a step KTAE costs.

Table ``ktae/key_tokens``: the most credited and most blamed tokens of the step (by total bonus, the
ranking `ktae.reports.keytokens.rank_key_tokens` defines for the logs and reports too), as a W&B /
trackio table and as TensorBoard text, through whichever of those loggers the run configured.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ktae.core.estimator import KeyTokenValues
from ktae.core.groups import dense_groups

LARGE_BONUS = 0.5
NUM_KEY_TOKENS = 10
KEY_TOKENS_TABLE = "ktae/key_tokens"
KEY_TOKEN_COLUMNS = ("kind", "rank", "token", "token_id", "total", "occurrences", "bonus", "groups")


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
    from :func:`bonus_sums`; a mean without correct (or incorrect) rollouts is left out."""
    large, tokens, on_correct, n_correct, on_incorrect, n_incorrect = sums.tolist()
    metrics = {"ktae/large_bonus_share": large / tokens if tokens else 0.0}
    if n_correct:
        metrics["ktae/bonus_mean_correct"] = on_correct / n_correct
    if n_incorrect:
        metrics["ktae/bonus_mean_incorrect"] = on_incorrect / n_incorrect
    return metrics


def top_key_tokens(
    values: KeyTokenValues,
    ids: torch.Tensor,
    mask: torch.Tensor,
    group_index,
    decode: Callable[[int], str],
    limit: int = NUM_KEY_TOKENS,
) -> dict[str, list[dict]]:
    """The step's most credited and blamed tokens, ranked by `ktae.reports.keytokens.rank_key_tokens`
    (total bonus: value x occurrences, summed over the groups), decoded.

    values: ``compute_key_token_values(ids, mask, scores, group_index)``; ids, mask: [B, T]; group_index: [B]
    as given to it. Returns {"credited": [...], "blamed": [...]}, each entry {"token": decode(id), "token_id",
    "bonus": mean value per occurrence, "total", "occurrences", "groups"}, strongest first.
    """
    from ktae.reports.keytokens import rank_key_tokens

    mask = mask.bool()
    row_group, _ = dense_groups(group_index, ids.shape[0], ids.device)
    # Occurrences of each (group, token) row of ``values``: count the masked (group, token) pairs and
    # look the rows up among them (rows without a key are not packed into one int64, so ids of any size work).
    observed = torch.stack([row_group[:, None].expand_as(ids)[mask], ids[mask].long()], dim=1)
    rows = torch.stack([values.group.to(ids.device), values.token.to(ids.device).long()], dim=1)
    _, inverse = torch.unique(torch.cat([rows, observed]), dim=0, return_inverse=True)
    occurrences = torch.bincount(inverse[len(rows) :], minlength=int(inverse.max()) + 1 if len(inverse) else 0)
    occurrences = occurrences[inverse[: len(rows)]]
    ranked = rank_key_tokens(values.token.cpu().numpy(), values.value.cpu().numpy(), occurrences.cpu().numpy(), limit)
    for entries in ranked.values():
        for entry in entries:
            token_id = entry.pop("token")
            entry.update(token=decode(token_id), token_id=token_id, bonus=entry["total"] / entry["occurrences"])
    return ranked


def key_token_rows(key_tokens: dict[str, list[dict]]) -> list[list]:
    """Rows of the ``ktae/key_tokens`` table, in ``KEY_TOKEN_COLUMNS`` order."""
    return [
        [
            kind,
            rank,
            entry["token"],
            entry["token_id"],
            entry["total"],
            entry["occurrences"],
            entry["bonus"],
            entry["groups"],
        ]
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
    for kind, rank, token, token_id, total, occurrences, bonus, groups in key_token_rows(key_tokens):
        shown = token.replace("|", "\\|").replace("\n", "\\n") or " "
        lines.append(
            f"| {kind} | {rank} | `{shown}` | {token_id} | {total:+.4f} | {occurrences} | {bonus:+.4f} | {groups} |"
        )
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
