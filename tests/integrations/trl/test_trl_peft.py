"""LoRA through `KTAEGRPOTrainer`'s ``peft_config`` (TRL's own PEFT path): only the adapter trains, the KL
reference is the base with the adapter disabled."""

import torch
from peft import LoraConfig, PeftModel
from trl_tiny import build_dataset, build_tokenizer, config_options, toy_reward

from ktae.integrations.trl import KTAEGRPOConfig, KTAEGRPOTrainer
from ktae.models import load_causal_lm


def test_lora_trains_the_adapter_only_against_the_base(tiny_model_dir, tmp_path):
    args = KTAEGRPOConfig(**config_options(tmp_path / "out", max_steps=3, learning_rate=0.5, beta=0.5))
    trainer = KTAEGRPOTrainer(
        tiny_model_dir,
        toy_reward,
        args=args,
        train_dataset=build_dataset(),
        processing_class=build_tokenizer(),
        peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
    )
    model = trainer.model
    assert isinstance(model, PeftModel) and trainer.ref_model is None  # no second model: the base is the reference
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_A." in name or ".lora_B." in name for name in trained)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()

    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and changed <= trained  # the base is frozen
    assert any(".lora_B." in name for name in changed)  # B starts at zero: a changed B changes the policy
    # Every base weight, the adapted layers' included, is as saved: the reference TRL computes the KL against.
    base = load_causal_lm(tiny_model_dir).state_dict()
    kept = {
        name.replace(".base_layer.", "."): p
        for name, p in model.get_base_model().state_dict().items()
        if ".lora_" not in name
    }
    assert kept.keys() == base.keys() and all(torch.equal(kept[name], base[name]) for name in base)
    kl = [record["kl"] for record in trainer.state.log_history if "kl" in record]
    assert kl[0] == 0.0 and kl[-1] > 0.0  # the adapter moved the policy away from the base
