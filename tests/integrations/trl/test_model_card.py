"""The model card's text for the cases a run meets: a hub base model, a local one, KTAE off, no accuracy."""

import yaml

from ktae.core.config import KTAEConfig
from ktae.integrations.trl.model_card import RunDescription, algorithm_name, is_hub_id, model_card


def _card(**changes) -> str:
    options = {
        "model_name": "grpo-ktae-1.5b",
        "algorithm": algorithm_name("grpo", True),
        "ktae_settings": vars(KTAEConfig(ignore_token_ids=(151643,))),
        "training": {"learning_rate": 1e-6, "num_generations": 16},
        "steps": 120,
        "description": RunDescription("Qwen/Qwen2.5-Math-1.5B", "DigitalLearningGmbH/MATH-lighteval"),
        "accuracy": [(0, 0.25), (60, 0.31), (120, 0.375)],
    }
    return model_card(**{**options, **changes})


def _metadata(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_hub_base_model_is_linked_and_in_the_metadata():
    card = _card()
    assert _metadata(card)["base_model"] == "Qwen/Qwen2.5-Math-1.5B"
    assert _metadata(card)["datasets"] == ["DigitalLearningGmbH/MATH-lighteval"]
    assert "from [Qwen/Qwen2.5-Math-1.5B](https://huggingface.co/Qwen/Qwen2.5-Math-1.5B) on " in card
    assert "(https://huggingface.co/datasets/DigitalLearningGmbH/MATH-lighteval) with GRPO+KTAE" in card
    assert "for 120 RL steps" in card
    assert "Held-out greedy accuracy: **37.5%** at step 120 (25.0% at step 0)." in card
    assert "| `ignore_token_ids` | 151643 |" in card and "| `learning_rate` | 1e-06 |" in card


def test_local_base_model_is_named_not_linked(tmp_path):
    card = _card(description=RunDescription(str(tmp_path / "my-sft"), "data/train.jsonl"), accuracy=None)
    assert "base_model" not in _metadata(card) and "datasets" not in _metadata(card)
    assert f"from `{tmp_path / 'my-sft'}` on `data/train.jsonl`" in card
    assert "huggingface.co/" + str(tmp_path) not in card
    assert "No held-out accuracy was measured" in card


def test_without_ktae_the_card_has_no_ktae_settings_but_still_cites_it():
    card = _card(algorithm=algorithm_name("dapo", False), ktae_settings=None, description=RunDescription())
    assert "with DAPO, using" in card and "KTAE settings" not in card
    assert "from a model whose origin the trainer was not told" in card
    assert "@article{sun2025ktae," in card and "None" not in card


def test_hub_ids():
    assert is_hub_id("Qwen/Qwen2.5-Math-7B") and is_hub_id("gpt2")
    assert not is_hub_id("a tiny model built locally") and not is_hub_id(None) and not is_hub_id("./model")
    assert not is_hub_id("/abs/path/model")
