"""One rank of the two-process KTAE test (run by test_trainer_distributed.py under torchrun).

Trains one step of KTAEGRPOTrainer on CPU (gloo) and checks on every generation round that the
advantages the processes keep, put together, equal TRL's rollout-level advantages plus the core's
key-token bonus on the whole batch, which is what a single-process run computes. Rank 0 writes the outcome
as JSON to argv[3].
usage: two_process_worker.py MODEL_DIR OUTPUT_DIR RESULT_JSON PER_DEVICE_BATCH:NUM_GENERATIONS ...
(one training run per PER_DEVICE_BATCH:NUM_GENERATIONS pair; the result holds one outcome per run)
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trl import GRPOTrainer
from trl_tiny import build_dataset, build_tokenizer, config_options, toy_reward

from ktae import compute_ktae_advantages
from ktae.integrations.trl import KTAEGRPOConfig, KTAEGRPOTrainer

TRL_ADVANTAGES = []  # TRL's own rollout-level advantages of each round, this process's rows
_trl_generate = GRPOTrainer._generate_and_score_completions


def _capture_trl_advantages(self, inputs):
    batch = _trl_generate(self, inputs)
    TRL_ADVANTAGES.append(batch["advantages"].clone())
    return batch


GRPOTrainer._generate_and_score_completions = _capture_trl_advantages


def run(model_dir: str, output_dir: str, per_device: int, group_size: int) -> dict:
    args = KTAEGRPOConfig(
        **config_options(output_dir, per_device_train_batch_size=per_device, num_generations=group_size, max_steps=2)
    )
    trainer = KTAEGRPOTrainer(
        model_dir, toy_reward, args=args, train_dataset=build_dataset(copies=6), processing_class=build_tokenizer()
    )
    TRL_ADVANTAGES.clear()
    rounds = []
    generate = trainer._generate_and_score_completions

    def capture(inputs):
        batch = generate(inputs)
        rounds.append((batch, trainer._gathered_scores().clone()))
        return batch

    trainer._generate_and_score_completions = capture
    trainer.train()

    accelerator, pad = trainer.accelerator, trainer.processing_class.pad_token_id
    outcome = {"rounds": len(rounds), "equal": True, "max_abs_diff": 0.0, "nonzero_bonus": False}
    for (batch, scores), trl_advantages in zip(rounds, TRL_ADVANTAGES, strict=True):
        ids = accelerator.gather(accelerator.pad_across_processes(batch["completion_ids"], dim=1, pad_index=pad))
        mask = accelerator.gather(accelerator.pad_across_processes(batch["completion_mask"], dim=1))
        kept = accelerator.gather(accelerator.pad_across_processes(batch["advantages"], dim=1))
        groups = torch.arange(ids.shape[0]) // group_size
        bonus = compute_ktae_advantages(ids, mask, scores, groups, config=trainer.ktae_config)  # base "none"
        expected = accelerator.gather(trl_advantages)[:, None] * mask + bonus
        outcome["equal"] &= bool(torch.equal(kept, expected))
        outcome["max_abs_diff"] = max(outcome["max_abs_diff"], (kept - expected).abs().max().item())
        rollout_level = kept.sum(1) / mask.sum(1).clamp(min=1)
        outcome["nonzero_bonus"] |= bool(((kept - rollout_level[:, None]) * mask).abs().max() > 1e-3)
        outcome["rows"] = ids.shape[0]
    outcome["world_size"] = accelerator.num_processes
    return outcome


def main() -> None:
    model_dir, output_dir, result_path = sys.argv[1:4]
    outcomes = []
    for pair in sys.argv[4:]:
        per_device, group_size = (int(x) for x in pair.split(":"))
        outcomes.append(run(model_dir, f"{output_dir}/{per_device}x{group_size}", per_device, group_size))
    if int(torch.distributed.get_rank()) == 0:
        Path(result_path).write_text(json.dumps(outcomes))
    # A live gloo group at interpreter exit can abort the process ("terminate called without an
    # active exception") after the work is done; end it the way a finished training script should.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
