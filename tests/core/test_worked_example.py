"""The worked example of docs/spec.md, number for number."""

import pytest
import torch

from ktae import KTAEConfig, compute_key_token_values, compute_ktae_advantages

PAD = 0
RESPONSES = torch.tensor([[5, 7, 7, 9], [5, 8, 9, PAD], [6, 7, 9, 9], [6, 8, PAD, PAD]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
SCORES = torch.tensor([1.0, 1.0, 0.0, 0.0])

# token: ((a, b, c, d), Fisher p, IG, v) from the spec's table
EXPECTED = {
    5: ((2, 0, 0, 2), 1 / 3, 1.0, 1.0),
    6: ((0, 2, 2, 0), 1 / 3, 1.0, -1.0),
    7: ((1, 1, 1, 1), 1.0, 0.0, 0.0),
    8: ((1, 1, 1, 1), 1.0, 0.0, 0.0),
    9: ((2, 1, 0, 1), 1.0, 0.311278, 0.029752),
}
ADVANTAGES = [
    [1.866024, 0.866024, 0.866024, 0.895775],
    [1.866024, 0.866024, 0.895775, 0.0],
    [-1.866024, -0.866024, -0.836272, -0.836272],
    [-1.866024, -0.866024, 0.0, 0.0],
]


def test_key_token_table(backend):
    values = compute_key_token_values(RESPONSES, MASK, SCORES, [0, 0, 0, 0], backend=backend)
    rows = {r["token"]: r for r in values.to_records()}
    assert sorted(rows) == sorted(EXPECTED)
    for token, (table, p, ig, v) in EXPECTED.items():
        row = rows[token]
        assert (row["a"], row["b"], row["c"], row["d"]) == table
        assert row["p_value"] == pytest.approx(p, abs=1e-6)
        assert row["info_gain"] == pytest.approx(ig, abs=1e-6)
        assert row["value"] == pytest.approx(v, abs=1e-6)
    # p = 1 means no evidence: F is exactly 0, not e^-2.
    assert rows[7]["fisher"] == 0.0 and rows[9]["fisher"] == 0.0


def test_advantages(backend):
    adv = compute_ktae_advantages(RESPONSES, MASK, SCORES, [0, 0, 0, 0], config=KTAEConfig(), backend=backend)
    assert adv.dtype == torch.float32 and adv.shape == RESPONSES.shape
    torch.testing.assert_close(adv, torch.tensor(ADVANTAGES), atol=1e-6, rtol=0)
    assert (adv[MASK == 0] == 0).all()


def test_pad_id_ignored_even_when_masked_in(backend):
    # The tokenizer's pad/eos ids get no bonus even if they sit inside the mask.
    responses = RESPONSES.clone()
    responses[0, 3] = 3
    responses[2, 3] = 3
    cfg = KTAEConfig(ignore_token_ids=(3,))
    adv = compute_ktae_advantages(responses, MASK, SCORES, [0, 0, 0, 0], config=cfg, backend=backend)
    assert adv[0, 3].item() == pytest.approx(0.866024, abs=1e-6)
    assert adv[2, 3].item() == pytest.approx(-0.866024, abs=1e-6)
