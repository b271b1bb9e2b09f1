"""The report as a person sees it: rendered by headless Chromium, screenshot and DOM checked."""

import re

import numpy as np
import pytest
from report_helpers import rollout_records, run_chromium, write_jsonl

from ktae.reports import build_report
from ktae.reports.colours import DivergingScale


@pytest.fixture(scope="module")
def report(tmp_path_factory, byte_level_tokenizer):
    folder = tmp_path_factory.mktemp("browser")
    path = write_jsonl(folder / "rollouts.jsonl", rollout_records(byte_level_tokenizer, steps=(3,), groups=3))
    return build_report(path, folder / "report.html", tokenizer=byte_level_tokenizer)


def _dom(chromium, url):
    result = run_chromium(chromium, url, "--dump-dom", "--virtual-time-budget=5000")
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_rendered_page_shows_coloured_tokens_and_model_text_as_text(chromium, report):
    dom = _dom(chromium, report.as_uri())
    assert re.search(r'data-render-ms="\d+"', dom), "the report's script did not run"
    first = dom[dom.index('id="g0"') : dom.index('id="g1"')]
    assert 'open=""' in first
    credited = re.findall(r'<span class="p(\d+)[^"]*" data-r="\d+">', first)
    blamed = re.findall(r'<span class="n(\d+)[^"]*" data-r="\d+">', first)
    assert len(credited) > 20 and len(blamed) > 20
    # The group's correct rollouts share tokens the incorrect ones never use: saturated credit.
    assert "10" in credited and "10" in blamed
    # Text reads naturally: merged pieces, multi-byte characters whole, whitespace kept.
    text = re.sub(r"<[^>]+>", "", first)
    assert "so the answer is \\boxed{1}." in text and "café 0\nWe compute 12 × 4 = 48 ✓" in text
    # Model output stays text: escaped in the DOM, never run as script.
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in text
    assert "<title>KTAE key-token report</title>" in dom
    # Groups other than the first render only when opened.
    later = dom[dom.index('id="g1"') :]
    assert 'class="rollout' not in later.split('id="g2"')[0]


def test_a_link_to_a_group_opens_that_group(chromium, report):
    dom = _dom(chromium, report.as_uri() + "#g2")
    assert re.search(r'<details class="group" id="g2" open="" data-rendered="1">', dom)
    assert 'class="rollout' not in dom[dom.index('id="g0"') : dom.index('id="g1"')]


def test_screenshot_is_not_blank_and_shows_both_colours(chromium, report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    result = run_chromium(
        chromium,
        report.as_uri(),
        f"--screenshot={shot}",
        "--window-size=1200,1400",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
    )
    assert shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    assert pixels.std() > 20 and len(np.unique(pixels, axis=0)) > 50  # a page, not a blank canvas

    def count(colour):
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int(np.sum(np.abs(pixels - rgb).max(axis=1) <= 3))

    scale = DivergingScale()
    # Strongly credited (dark blue) and blamed (dark red) token backgrounds fill visible areas.
    assert count(scale.background(10)) > 2000
    assert count(scale.background(-10)) > 2000


def test_hovering_a_token_shows_its_statistics(chromium, report, tmp_path):
    # The report's own script, with a pointer moved onto the first strongly credited token.
    hover = (
        "<script>const s = document.querySelector('#g0 .text span.p10');"
        "s.dispatchEvent(new MouseEvent('mouseover', {bubbles: true, clientX: 40, clientY: 40}));"
        "document.body.dataset.hovered = s.textContent;</script></body>"
    )
    page = tmp_path / "hover.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", hover), encoding="utf-8")
    dom = _dom(chromium, page.as_uri())
    tip = re.search(r'<div id="tip" style="display: block;[^"]*">(.*?)</table>', dom, re.S)
    assert tip, "no tooltip after hovering a token"
    cells = dict(re.findall(r"<tr><td>([^<]+)</td><td class=\"num\">([^<]+)</td></tr>", tip.group(1)))
    # Group 0: 2 correct and 2 incorrect rollouts; a saturated credited token is in both correct ones only.
    assert cells["a (in correct)"] == "2 of 2" and cells["b (in incorrect)"] == "0 of 2"
    assert cells["c (correct, absent)"] == "0" and cells["d (incorrect, absent)"] == "2"
    assert float(cells["value v"]) > 0.95 and 0 < float(cells["Fisher p-value"]) < 1
    assert {"F = exp(\u22122p)", "IG (bits)", "h", "TF", "occurrences (correct + incorrect)"} <= set(cells)
