"""The CPU mode's generation server (ktae.integrations.verl.cpu_rollout.TransformersServer), called as
verl's agent loop and weight sync call it, in this process: its samples are reproducible, its log-probs
are the model's, it honours verl's lengths and sampling settings, and a weight sync replaces every
parameter or fails by name."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoModelForCausalLM

from ktae.integrations.verl.cpu_rollout import TransformersServer
from ktae.integrations.verl.demo import build_assets

PROMPT_LENGTH, RESPONSE_LENGTH = 64, 12


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.mktemp("demo"), seed=0)


@pytest.fixture
def make_server(compose, assets):
    def make(*overrides: str) -> TransformersServer:
        config = compose(
            [
                "actor_rollout_ref.rollout.name=hf",
                "actor_rollout_ref.rollout.dtype=float32",
                f"actor_rollout_ref.model.path={assets.model_dir}",
                "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
                f"data.max_prompt_length={PROMPT_LENGTH}",
                f"data.max_response_length={RESPONSE_LENGTH}",
                *overrides,
            ]
        )
        return TransformersServer(config.actor_rollout_ref.rollout, config.actor_rollout_ref.model, replica_rank=0)

    return make


@pytest.fixture(scope="module")
def prompt(assets) -> list[int]:
    """A demo problem as verl's agent loop sends it: the chat template's token ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    messages = [{"role": "user", "content": "3+4+5="}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


def generate(server: TransformersServer, prompt: list[int], **sampling):
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True, **sampling}
    return asyncio.run(server.generate(prompt_ids=prompt, sampling_params=params, request_id="r"))


def forward_log_probs(model, prompt: list[int], response: list[int], temperature: float = 1.0) -> torch.Tensor:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def test_samples_are_reproducible_and_distinct_per_request(make_server, prompt):
    server = make_server()
    first, second = generate(server, prompt), generate(server, prompt)
    assert first.token_ids != second.token_ids  # a prompt's rollouts differ
    again = make_server()
    assert [generate(again, prompt).token_ids, generate(again, prompt).token_ids] == [first.token_ids, second.token_ids]
    assert first.extra_fields == {"global_steps": 0} and first.stop_reason == "completed"
    other_seed = make_server("actor_rollout_ref.rollout.seed=7")
    assert generate(other_seed, prompt).token_ids != first.token_ids


@pytest.mark.parametrize(("mode", "temperature"), [("processed_logprobs", 0.7), ("raw_logprobs", 0.7)])
def test_log_probs_are_the_models(make_server, assets, prompt, mode, temperature):
    server = make_server(f"actor_rollout_ref.rollout.logprobs_mode={mode}")
    output = generate(server, prompt, temperature=temperature)
    model = AutoModelForCausalLM.from_pretrained(assets.model_dir, dtype=torch.float32)
    # processed: the distribution sampled from (verl's actor recomputes it: logits / temperature)
    expected = forward_log_probs(model, prompt, output.token_ids, temperature if mode == "processed_logprobs" else 1.0)
    torch.testing.assert_close(torch.tensor(output.log_probs), expected, atol=1e-4, rtol=0)


def test_greedy_decoding_takes_the_most_likely_token(make_server, assets, prompt):
    output = generate(make_server(), prompt, temperature=0.0, logprobs=False)
    assert output.log_probs is None
    model = AutoModelForCausalLM.from_pretrained(assets.model_dir, dtype=torch.float32)
    ids = torch.tensor([prompt + output.token_ids])
    with torch.no_grad():
        predicted = model(ids).logits[0, len(prompt) - 1 : -1].argmax(-1)
    assert predicted.tolist() == output.token_ids


def test_lengths_follow_verls_settings(make_server, prompt):
    server = make_server("actor_rollout_ref.rollout.ignore_eos=True")
    assert len(generate(server, prompt).token_ids) == RESPONSE_LENGTH
    assert len(generate(server, prompt, max_tokens=3).token_ids) == 3
    # as verl's vLLM server: a long prompt leaves what the two lengths allow together
    long_prompt = (prompt * 8)[: PROMPT_LENGTH + 6]
    assert len(generate(server, long_prompt).token_ids) == 6
    with pytest.raises(ValueError, match="no room to generate"):
        generate(server, (prompt * 8)[: PROMPT_LENGTH + RESPONSE_LENGTH])
    with pytest.raises(ValueError, match="text only"):
        asyncio.run(server.generate(prompt_ids=prompt, sampling_params={}, request_id="r", image_data=[object()]))


def test_weight_sync_replaces_the_model_and_resets_the_step(make_server, assets, prompt):
    server = make_server()
    trained = AutoModelForCausalLM.from_pretrained(assets.model_dir, dtype=torch.float32)
    with torch.no_grad():
        for param in trained.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    state = list(trained.state_dict().items())
    server.load_weights(state[: len(state) // 2])  # in buckets, as the adapter sends them
    server.load_weights(state[len(state) // 2 :])
    server.finish_weight_update(global_steps=3)
    output = generate(server, prompt)
    assert output.extra_fields == {"global_steps": 3}
    expected = forward_log_probs(trained, prompt, output.token_ids)
    torch.testing.assert_close(torch.tensor(output.log_probs), expected, atol=1e-4, rtol=0)


def test_weight_sync_fails_by_name_on_an_unknown_or_missing_parameter(make_server, assets):
    server = make_server()
    with pytest.raises(KeyError, match=r"no parameter 'model\.extra\.weight'"):
        server.load_weights([("model.extra.weight", torch.zeros(1))])
    state = AutoModelForCausalLM.from_pretrained(assets.model_dir).state_dict()
    server.load_weights([(name, value) for name, value in state.items() if "layers.1." not in name])
    with pytest.raises(RuntimeError, match=r"left \d+ parameters of the CPU rollout unset: \['model.layers.1"):
        server.finish_weight_update(global_steps=1)
