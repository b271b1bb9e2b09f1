"""Self-contained HTML pages: inline CSS and JS, data as compact JSON, nothing fetched.

A key-token page carries, per group: the distinct tokens (text, id, profile), the distinct
statistics profiles (a, b, occurrences, p, F, IG, h, TF, v, colour bucket) and, per rollout,
each position's token as base64 varints (``pack_varints``); ``report.js`` renders a group
when it is opened. Text from models is escaped in Python (``html.escape``) or in the page's JS.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np

from ktae.reports.colours import DivergingScale
from ktae.reports.keytokens import STRONG_VALUE, KeyTokenAnalysis
from ktae.reports.text import visible_whitespace

TOP_COUNT = 10
ADVANTAGE_TOLERANCE = 1e-4  # logged advantages are float32
# Statistics of a token shown on hover: page key -> KeyTokenAnalysis.stats column.
_PROFILE_COLUMNS = {
    "a": "a",
    "b": "b",
    "oT": "occ_true",
    "oF": "occ_false",
    "p": "p_value",
    "F": "fisher",
    "IG": "info_gain",
    "h": "h",
    "TF": "tf",
    "v": "value",
}
_COUNT_COLUMNS = frozenset({"a", "b", "oT", "oF"})


def _asset(name: str) -> str:
    return resources.files("ktae.reports").joinpath(name).read_text(encoding="utf-8")


def page(title: str, body: str, scale: DivergingScale | None = None, data: dict | None = None) -> str:
    """A whole HTML document; with ``data`` it embeds the JSON and the key-token renderer."""
    css = _asset("report.css") + ("\n" + scale.css() if scale else "")
    script = ""
    if data is not None:
        # "<" escaped inside JSON strings, so no text can close the <script> element.
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
        script = (
            f'<script type="application/json" id="ktae-data">{payload}</script>\n<script>{_asset("report.js")}</script>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{css}</style></head>\n<body>\n{body}\n{script}\n</body></html>\n"
    )


def _rounded(values: np.ndarray, digits: int = 4) -> list[float]:
    """Floats with ``digits`` significant digits: what a reader can use, at a fraction of the bytes."""
    return [float(f"{x:.{digits}g}") for x in values.tolist()]


def pack_varints(values: np.ndarray) -> str:
    """Non-negative ints as base64 LEB128 varints (7 bits a byte, high bit = more bytes follow).

    Tokens are numbered by frequency within their group, so most take one byte.
    """
    values = np.asarray(values, dtype=np.uint64)
    sizes = np.ones(values.shape, dtype=np.int64)
    for bits in (7, 14, 21, 28, 35, 42, 49, 56, 63):
        sizes += values >= np.uint64(1 << bits)
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    starts = np.cumsum(sizes) - sizes
    for k in range(int(sizes.max(initial=1))):
        has = sizes > k
        low = (values[has] >> np.uint64(7 * k)) & np.uint64(127)
        out[starts[has] + k] = low | (np.uint64(128) * (sizes[has] > k + 1))
    return base64.b64encode(out.tobytes()).decode("ascii")


def group_names(keys: list[tuple], prompts: list[str]) -> list[str]:
    """A short title per group: "step S · group G", or the prompt for groups keyed by their prompt
    (verl's dumps) without the part all those prompts share (a chat template's system text)."""
    keyed_by_prompt = [prompt for (_, group), prompt in zip(keys, prompts) if group == prompt]
    # A character-wise common prefix of texts (not of paths) is what is wanted here.
    shared = os.path.commonprefix(keyed_by_prompt) if len(set(keyed_by_prompt)) > 1 else ""  # noqa: RUF071
    word_end = re.match(r"(?s).*\s", shared)  # back to the end of a whole word
    shared = word_end.group(0) if word_end else ""
    names = []
    for (step, group), prompt in zip(keys, prompts):
        if group == prompt:
            text = " ".join(("prompt " + ("\u2026" if shared else "") + prompt[len(shared) :]).split())
        else:
            text = f"group {group}"
        text = text if len(text) <= 70 else text[:69] + "\u2026"
        names.append(text if step is None else f"step {step} \u00b7 {text}")
    return names


def key_token_data(analysis: KeyTokenAnalysis, scale: DivergingScale, strong: float = STRONG_VALUE) -> dict:
    """The JSON the page's renderer reads: one entry per group (see module docstring)."""
    stats, data = analysis.stats, analysis.data
    occurrences = stats["occ_true"] + stats["occ_false"]
    rows_by_group = np.split(np.argsort(stats["group"], kind="stable"), np.cumsum(np.bincount(stats["group"]))[:-1])
    rollouts_by_group: list[list[int]] = [[] for _ in analysis.group_keys]
    for rollout, group in enumerate(analysis.rollout_group.tolist()):
        rollouts_by_group[group].append(rollout)
    local = np.empty(stats["value"].size, dtype=np.int64)
    prompts = [data.rollouts[members[0]].prompt for members in rollouts_by_group]
    groups = []
    for group, (name, rows, members) in enumerate(
        zip(group_names(analysis.group_keys, prompts), rows_by_group, rollouts_by_group)
    ):
        rows = rows[np.argsort(-occurrences[rows], kind="stable")]  # frequent tokens first
        local[rows] = np.arange(rows.size)
        text: list[str | None] = [None] * rows.size
        rollouts = []
        for rollout in members:
            seq = local[analysis.row_of_token[rollout]]
            exceptions = {}
            for position, (row, piece) in enumerate(zip(seq.tolist(), data.texts[rollout])):
                if text[row] is None:
                    text[row] = piece
                elif piece != text[row]:
                    exceptions[position] = piece  # a token whose text depends on its neighbours (split UTF-8)
            entry: dict[str, Any] = {
                "s": data.rollouts[rollout].score,
                "c": bool(analysis.correct[rollout]),
                "A": round(float(analysis.rollout_advantage[rollout]), 4),
                "seq": pack_varints(seq),
            }
            if exceptions:
                entry["x"] = exceptions
            rollouts.append(entry)
        token_ids = stats["token"][rows].tolist()
        labels = {}
        for index, (token_id, shown) in enumerate(zip(token_ids, text)):
            assert shown is not None  # every pair's token occurs in one of the group's rollouts
            label = data.labels.get(token_id, str(token_id))
            if label != visible_whitespace(shown):
                labels[index] = label
        # Tokens with the same counts have the same statistics (most rare tokens do): store each
        # distinct profile once and point the tokens at it.
        names = list(_PROFILE_COLUMNS)
        columns = np.stack([stats[_PROFILE_COLUMNS[name]][rows] for name in names], axis=1).astype(np.float64)
        profiles, profile_of_row = np.unique(columns, axis=0, return_inverse=True)
        profile = {
            name: profiles[:, i].astype(np.int64).tolist() if name in _COUNT_COLUMNS else _rounded(profiles[:, i])
            for i, name in enumerate(names)
        }
        profile["k"] = scale.buckets(profiles[:, names.index("v")]).tolist()
        member_rows = np.concatenate([analysis.row_of_token[m] for m in members])
        groups.append(
            {
                "name": name,
                "prompt": prompts[group],
                "nT": int(analysis.n_true[group]),
                "nF": int(analysis.n_false[group]),
                "strong": float(np.mean(np.abs(stats["value"][member_rows]) > strong)),
                "tok": {"text": text, "lx": labels, "id": token_ids, "pr": profile_of_row.reshape(-1).tolist()},
                "P": profile,
                "rollouts": rollouts,
            }
        )
    return {"topCount": TOP_COUNT, "ignore": list(analysis.config.ignore_token_ids), "groups": groups}


def legend_html(scale: DivergingScale) -> str:
    swatches = "".join(
        f'<span style="background:{colour or "#ffffff"}" title="v \u2248 {value:+.2f}"></span>'
        for value, colour in scale.legend()
    )
    return (
        f'<div class="legend"><small>blamed</small><b>\u2212{scale.top:g}</b><span class="bar">{swatches}</span>'
        f"<b>+{scale.top:g}</b><small>credited</small><small>\u00b7 token colour = key-token value v "
        "(hover a token for a, b, c, d, p, F, IG, h, TF)</small></div>"
    )


def top_tokens_html(top: dict[str, list[dict]], scale: DivergingScale) -> str:
    """Tables of the tokens with the largest total credit and blame (sum of v over occurrences),
    each token coloured by its mean value per occurrence."""

    def table(title: str, entries: list[dict]) -> str:
        means = scale.buckets([e["total"] / e["occurrences"] for e in entries]).tolist()
        rows = (
            "".join(
                f'<tr><td><span class="tok {scale.css_class(bucket)}">{html.escape(e["label"])}</span></td>'
                f'<td class="num">{e["total"]:+.2f}</td>'
                f'<td class="num">{e["occurrences"]}</td><td class="num">{e["groups"]}</td></tr>'
                for e, bucket in zip(entries, means)
            )
            or '<tr><td colspan="4">none</td></tr>'
        )
        return (
            f"<div><h3>{title}</h3><table><tr><th>token</th><th>total v</th><th>occurrences</th><th>groups</th></tr>"
            f"{rows}</table></div>"
        )

    credited, blamed = table("Most credited overall", top["credited"]), table("Most blamed overall", top["blamed"])
    return f'<div class="tables">{credited}{blamed}</div>'


def config_html(analysis: KeyTokenAnalysis) -> str:
    c = analysis.config
    return (
        f"\u03b1 = {c.alpha:g}, \u03b2 = {c.beta_ig:g}, \u03b3 = {c.gamma_tf:g}, top = {c.top:g}, "
        f"correct when score &gt; {c.correct_threshold:g}, rollout advantage {html.escape(c.rollout_advantage)}, "
        f"ignored token ids {html.escape(str(list(c.ignore_token_ids)) if c.ignore_token_ids else 'none')}"
    )


def render_key_token_report(
    analysis: KeyTokenAnalysis,
    title: str,
    subtitle: str = "",
    notices: Sequence[str] = (),
    strong: float = STRONG_VALUE,
) -> str:
    """The HTML of a key-token report over the analysed rollouts."""
    scale = DivergingScale(top=analysis.config.top if analysis.config.top > 0 else 1.0)
    shares = analysis.strong_shares(strong)
    notices = list(notices)
    checked, gap = analysis.stored_advantage_gap()
    if checked and gap > ADVANTAGE_TOLERANCE:
        notices.append(
            f"The advantages logged with {checked} rollout(s) differ from the recomputed ones (rollout advantage + v) "
            f"by up to {gap:.3g}: they were trained with other KTAE settings than those below, or without KTAE."
        )
    check = (
        f" Recomputed advantages match those logged with {checked} rollout(s) (max |difference| {gap:.1e})."
        if checked and gap <= ADVANTAGE_TOLERANCE
        else ""
    )
    tokens = sum(ids.size for ids in analysis.data.token_ids)
    mixed = int(np.sum((analysis.n_true > 0) & (analysis.n_false > 0)))
    facts = (
        f'<div class="facts"><span><b>{len(analysis.group_keys)}</b> groups ({mixed} with correct and incorrect '
        f"rollouts)</span><span><b>{len(analysis.data.rollouts)}</b> rollouts, <b>{int(analysis.correct.sum())}</b> "
        f"correct</span><span><b>{tokens:,}</b> tokens</span>"
        f"<span>|v| &gt; {strong:g}: <b>{100 * shares['strong']:.1f}%</b>"
        f" of tokens ({100 * shares['credited']:.1f}% credited, {100 * shares['blamed']:.1f}% blamed)</span></div>"
    )
    body = (
        f"<h1>{html.escape(title)}</h1>"
        + (f'<p class="sub">{html.escape(subtitle)}</p>' if subtitle else "")
        + "".join(f'<p class="notice">{html.escape(n)}</p>' for n in notices)
        + facts
        + f'<p class="sub">KTAE: {config_html(analysis)}. '
        + f"Statistics recomputed with ktae.compute_key_token_values.{check}</p>"
        + legend_html(scale)
        + top_tokens_html(analysis.top_tokens(TOP_COUNT), scale)
        + '<h2>Groups</h2><div id="groups"></div><div id="tip"></div>'
    )
    return page(title, body, scale, key_token_data(analysis, scale, strong))
