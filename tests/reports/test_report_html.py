import base64
import json
import re

import numpy as np
import pytest
from report_helpers import rollout_records, write_jsonl

from ktae import KTAEConfig
from ktae.reports import build_report, build_run_report, run_ktae_config
from ktae.reports.html import group_names, pack_varints
from ktae.reports.keytokens import analyse
from ktae.reports.rollouts import load_rollouts, parse_rollout, tokenize_rollouts
from ktae.run_folder import KTAESettings, write_ktae_settings


def page_data(html_text):
    match = re.search(r'<script type="application/json" id="ktae-data">(.*?)</script>', html_text, re.S)
    return json.loads(match.group(1))


def decode_varints(text):
    """LEB128 decoding, written out independently of the page's JS."""
    values, value, shift = [], 0, 0
    for byte in base64.b64decode(text):
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
        else:
            values.append(value)
            value, shift = 0, 0
    assert shift == 0, "truncated varint"
    return values


def test_pack_varints_round_trips_every_size():
    values = [0, 1, 127, 128, 300, 16383, 16384, 2**21, 2**35 + 5, 2**63 + 1]
    assert decode_varints(pack_varints(np.array(values, dtype=np.uint64))) == values
    assert len(base64.b64decode(pack_varints(np.arange(128)))) == 128  # one byte each below 128
    assert pack_varints(np.array([], dtype=np.int64)) == ""


def test_report_data_rebuilds_every_response_and_value(tmp_path, byte_level_tokenizer):
    path = write_jsonl(tmp_path / "rollouts.jsonl", rollout_records(byte_level_tokenizer))
    out = build_report(path, tmp_path / "report.html", tokenizer=byte_level_tokenizer)
    data = page_data(out.read_text(encoding="utf-8"))
    analysis = analyse(tokenize_rollouts(load_rollouts(path), byte_level_tokenizer))
    assert len(data["groups"]) == 4  # (step, group) pairs: 2 steps x 2 groups
    assert data["ignore"] == [byte_level_tokenizer.eos_token_id]
    records = iter(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    rollout = 0
    for group in data["groups"]:
        tok = group["tok"]
        assert group["nT"] == 2 and group["nF"] == 2
        # Tokens are numbered most frequent first, so the varints stay short.
        occurrences = [group["P"]["oT"][p] + group["P"]["oF"][p] for p in tok["pr"]]
        assert occurrences == sorted(occurrences, reverse=True)
        for entry in group["rollouts"]:
            record = next(records)
            seq = decode_varints(entry["seq"])
            text = "".join(entry.get("x", {}).get(str(j), tok["text"][r]) for j, r in enumerate(seq))
            assert text == record["response"]  # byte-level pieces merged back into the text
            assert [tok["id"][r] for r in seq] == record["token_ids"]
            expected = analysis.stats["value"][analysis.row_of_token[rollout]]
            shown = [group["P"]["v"][tok["pr"][r]] for r in seq]  # each token's statistics profile
            np.testing.assert_allclose(shown, expected, rtol=1e-3, atol=1e-4)
            assert entry["c"] == record["correct"]
            rollout += 1


def test_group_names_drop_the_template_text_all_prompts_share():
    template = "system\nPlease reason step by step.\nuser\n{}\nassistant\n"
    prompts = [template.format("What is 2+2?"), template.format("Solve x^2 = 4."), "p"]
    keys = [(3, prompts[0]), (3, prompts[1]), (None, 7)]  # verl dumps: the prompt is the group id
    assert group_names(keys, prompts) == [
        "step 3 · prompt …What is 2+2? assistant",
        "step 3 · prompt …Solve x^2 = 4. assistant",
        "group 7",
    ]
    long = "x" * 100
    assert group_names([(1, long)], [long]) == [f"step 1 · prompt {'x' * 62}…"]


def test_report_says_whether_logged_advantages_match(tmp_path, byte_level_tokenizer):
    records = rollout_records(byte_level_tokenizer, steps=(1,), groups=1)
    for record in records:
        record["advantages"] = [0.0] * len(record["token_ids"])  # not what KTAE gives these rollouts
    path = write_jsonl(tmp_path / "rollouts.jsonl", records)
    text = build_report(path, tmp_path / "r.html", tokenizer=byte_level_tokenizer).read_text(encoding="utf-8")
    assert "The advantages logged with 4 rollout(s) differ from the recomputed ones" in text
    analysis = analyse(tokenize_rollouts(load_rollouts(path), byte_level_tokenizer))
    for index, record in enumerate(records):
        rows = analysis.row_of_token[index]
        record["advantages"] = (analysis.rollout_advantage[index] + analysis.stats["value"][rows]).tolist()
    write_jsonl(path, records)
    text = build_report(path, tmp_path / "r.html", tokenizer=byte_level_tokenizer).read_text(encoding="utf-8")
    assert "Recomputed advantages match those logged with 4 rollout(s)" in text and "differ from" not in text


def test_report_is_self_contained_and_escapes_model_text(tmp_path, byte_level_tokenizer):
    path = write_jsonl(tmp_path / "rollouts.jsonl", rollout_records(byte_level_tokenizer))
    html_text = build_report(path, tmp_path / "r.html", tokenizer=byte_level_tokenizer).read_text(encoding="utf-8")
    assert html_text.count("<script") == 2  # the data block and the renderer, nothing from the rollouts
    # Model text reaches the page only inside the JSON, with "<" escaped so nothing can close the script.
    assert "<b>2x" not in html_text and "Solve problem 0: \\u003cb>2x + 1\\u003c/b>?" in html_text
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html_text)
    assert "<link" not in html_text and "@import" not in html_text


def test_report_of_rollout_objects_keeps_the_steps_asked_for(tmp_path):
    records = [
        {"step": s, "group": 0, "response": f"x = {s + i % 2}", "score": i % 2} for s in (1, 2) for i in range(4)
    ]
    rollouts = [parse_rollout(r, f"record {n}") for n, r in enumerate(records)]
    steps = (s for s in [2])  # any iterable, read once
    text = build_report(rollouts, tmp_path / "r.html", steps=steps).read_text(encoding="utf-8")
    assert "step 2" in text and "step 1" not in text


def test_run_config_is_read_from_flat_trainer_keys_or_a_ktae_section(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.yaml").write_text(
        "algo: dapo\nktae: true\nktae_top: 0.5\nktae_beta_ig: 2\n"
        "ktae_ignore_token_ids: null\nktae_log_rollouts_steps: 5\n"
    )
    config, notes = run_ktae_config(tmp_path / "a")
    assert (config.top, config.beta_ig, config.ignore_token_ids, notes) == (0.5, 2.0, (), [])
    # no ktae_rollout_advantage: the run trained on TRL's rollout advantage, which divides by std + 1e-4
    assert (config.rollout_advantage, config.epsilon) == ("grpo", 1e-4)
    (tmp_path / "a" / "config.yaml").write_text("ktae: true\nktae_rollout_advantage: grpo\n")
    assert run_ktae_config(tmp_path / "a")[0] == KTAEConfig(rollout_advantage="grpo")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.yaml").write_text("algorithm:\n  adv_estimator: ktae\n  ktae:\n    alpha: 3\n")
    assert run_ktae_config(tmp_path / "b")[0] == KTAEConfig(alpha=3)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.yaml").write_text("ktae: false\n")
    assert "without KTAE" in run_ktae_config(tmp_path / "c")[1][0]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.yaml").write_text("ktae:\n  alpah: 1\n")
    with pytest.raises(ValueError, match="alpah"):
        run_ktae_config(tmp_path / "d")
    assert run_ktae_config(tmp_path) == (None, [])


def test_run_config_is_the_settings_the_run_wrote(tmp_path):
    """A run folder with ktae_settings.json: its resolved settings, not what config.yaml's keys suggest."""
    (tmp_path / "config.yaml").write_text("ktae: true\nktae_top: 0.5\nscale_rewards: batch\n")
    settings = KTAESettings(
        ktae=True,
        estimator=KTAEConfig(top=0.5, ignore_token_ids=(0, 1), epsilon=1e-4),
        rollout_advantage="TRL's own (scale_rewards=batch)",
        exact_base=False,
    )
    write_ktae_settings(tmp_path, settings)
    config, notes = run_ktae_config(tmp_path)
    assert config == settings.estimator and config.ignore_token_ids == (0, 1)
    assert notes == [
        "No KTAE base equals this run's rollout-level advantage (TRL's own (scale_rewards=batch)): the rollout "
        "advantages shown are KTAE's grpo."
    ]


def _run(folder, tokenizer, accuracy):
    write_jsonl(folder / "rollouts.jsonl", rollout_records(tokenizer))
    metrics = [{"step": s, "reward": accuracy * s, "accuracy": accuracy * s} for s in range(1, 21)]
    write_jsonl(folder / "metrics.jsonl", metrics)
    (folder / "config.yaml").write_text("ktae: true\nktae_top: 1.0\n")
    return folder


def test_run_report_compares_runs_and_pages_every_step(tmp_path, byte_level_tokenizer):
    from test_report_curves import _colour_pixels

    first = _run(tmp_path / "grpo", byte_level_tokenizer, 0.01)
    second = _run(tmp_path / "ktae", byte_level_tokenizer, 0.02)
    index = build_run_report([first, second], tmp_path / "out", tokenizer=byte_level_tokenizer)
    text = index.read_text(encoding="utf-8")
    for run in ("grpo", "ktae"):
        for step in (10, 20):
            page = tmp_path / "out" / run / f"step-{step}.html"
            assert f'href="{run}/step-{step}.html"' in text
            assert len(page_data(page.read_text(encoding="utf-8"))["groups"]) == 2
    # Both runs on one curves plot and on the key-token plot, embedded in the page too.
    for png in ("curves.png", "key-tokens.png"):
        assert _colour_pixels(tmp_path / "out" / png, (31, 119, 180)) > 50
        assert _colour_pixels(tmp_path / "out" / png, (255, 127, 14)) > 50
    assert text.count('src="data:image/png;base64,') == 2
    with pytest.raises(ValueError, match="labels"):
        build_run_report([first, second], tmp_path / "x", labels=["one"])
