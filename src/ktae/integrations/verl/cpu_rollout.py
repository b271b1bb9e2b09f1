"""The CPU mode's rollout: verl's token-in/token-out generation server, on transformers' ``generate``.

verl 0.9.1 generates with server replicas (vLLM, SGLang, TensorRT-LLM) that its agent loop sends
one request per rollout to, and that the actor workers push updated weights into. This module is
that contract for CPU processes, registered as ``actor_rollout_ref.rollout.name=hf`` by
:mod:`ktae.integrations.verl.cpu`:

- `TransformersServer`: a Ray actor holding the policy as a transformers model; it samples one
  request at a time and returns verl's ``TokenOutput`` (token ids, log-probs, the weights' step);
- `TransformersReplica`: verl's ``RolloutReplica``, one server per replica;
- `TransformersServerAdapter`: verl's ``BaseRollout`` in each actor worker, which sends the trained
  weights to its replica's server after every update.

Sampling is reproducible: each request draws from its own seed, made of the rollout seed, the
replica, the weights' step, the prompt and how many times the replica was already asked for that
prompt at that step. A replica's rollouts of a prompt are then the same in two runs with the same
seed (in the order the requests happen to arrive), whatever else runs beside them.
"""

from __future__ import annotations

import collections
import hashlib
import os
from collections.abc import Iterable
from typing import Any, cast

import ray
import torch
from ray.actor import ActorHandle
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.config import HFModelConfig
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

#: torch dtypes by the names verl's ``rollout.dtype`` takes.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def server_name(replica_rank: int) -> str:
    """The Ray actor name of replica ``replica_rank``'s server (the adapter finds it by name)."""
    return f"ktae_cpu_rollout_server_{replica_rank}"


def request_seed(*parts: int) -> int:
    """A 63-bit seed drawn from ``parts`` (stable across processes and runs, unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _ids(values: Iterable[Any]) -> list[int]:
    return [int(value) for value in values]


class TransformersServer:
    """Generates rollouts for verl's agent loop with a transformers model on CPU.

    config: verl's ``RolloutConfig`` (prompt/response lengths, seed, dtype, log-prob mode, ignore_eos);
    model_config: ``actor_rollout_ref.model`` (verl's ``HFModelConfig``: the path, the tokenizer, the
    model config with the run's overrides such as ``attn_implementation``).
    """

    def __init__(self, config, model_config, replica_rank: int) -> None:
        from transformers import AutoModelForCausalLM

        self.config = omega_conf_to_dataclass(config)
        model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        if self.config.dtype not in DTYPES:
            raise ValueError(
                f"the CPU rollout computes in {', '.join(DTYPES)}; "
                f"actor_rollout_ref.rollout.dtype={self.config.dtype!r}"
            )
        self.model: Any = AutoModelForCausalLM.from_pretrained(
            model_config.local_path,
            config=model_config.hf_config,
            dtype=DTYPES[self.config.dtype],
            trust_remote_code=model_config.trust_remote_code,
        )
        self.model.eval()
        generation = model_config.generation_config
        eos = generation.eos_token_id if generation is not None else None
        if eos is None:
            eos = model_config.tokenizer.eos_token_id
        self.eos_token_ids = _ids(eos if isinstance(eos, list) else [eos])
        pad = model_config.tokenizer.pad_token_id
        self.pad_token_id = self.eos_token_ids[0] if pad is None else int(pad)
        self.replica_rank = replica_rank
        self.global_steps = 0
        # Requests per prompt since the weights last changed: how a prompt's rollouts get distinct seeds.
        self._asked: collections.Counter[tuple[int, ...]] = collections.Counter()
        self._updated: set[int] = set()

    def _max_new_tokens(self, prompt_ids: list[int], sampling_params: dict) -> int:
        # as verl's vLLM server: the request's max_tokens, else what the prompt leaves of the two lengths,
        # within the model's context (max_model_len, by default both lengths)
        lengths = self.config.prompt_length + self.config.response_length
        room = (self.config.max_model_len or lengths) - len(prompt_ids)
        if room < 1:
            raise ValueError(f"a prompt of {len(prompt_ids)} tokens leaves no room to generate")
        requested = sampling_params.pop("max_tokens", sampling_params.pop("max_new_tokens", None))
        limit = min(self.config.response_length, lengths - len(prompt_ids)) if requested is None else int(requested)
        return max(1, min(limit, room))

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data=None,
        video_data=None,
        **kwargs,
    ) -> TokenOutput:
        """Sample one response to ``prompt_ids`` (verl's server call); text only."""
        from transformers import GenerationConfig

        if image_data is not None or video_data is not None:
            raise ValueError("the CPU rollout generates text only (no image_data/video_data)")
        prompt_ids = _ids(prompt_ids)
        sampling_params = dict(sampling_params)
        max_new_tokens = self._max_new_tokens(prompt_ids, sampling_params)
        temperature = float(sampling_params.get("temperature") or 0.0)
        top_k = int(sampling_params.get("top_k") or -1)
        sampling = temperature > 0
        generation_config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=float(sampling_params.get("top_p", 1.0)) if sampling else None,
            top_k=(top_k if top_k > 0 else 0) if sampling else None,
            repetition_penalty=float(sampling_params.get("repetition_penalty", 1.0)),
            eos_token_id=None if self.config.ignore_eos else self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
            output_scores=True,
            output_logits=True,
        )
        key = tuple(prompt_ids)
        seed = request_seed(self.config.seed, self.replica_rank, self.global_steps, self._asked[key], *key)
        self._asked[key] += 1
        inputs = torch.tensor([prompt_ids])
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            output = self.model.generate(
                inputs, attention_mask=torch.ones_like(inputs), generation_config=generation_config
            )
        token_ids = output.sequences[0, len(prompt_ids) :].tolist()
        log_probs = None
        if sampling_params.get("logprobs"):
            # processed: after temperature and top-k/p (the distribution sampled from); raw: the model's
            processed = self.config.logprobs_mode == "processed_logprobs"
            steps = output.scores if processed else output.logits
            assert steps is not None  # asked for with output_scores and output_logits
            chosen = torch.tensor(token_ids)[:, None]
            log_probs = torch.cat(steps).float().log_softmax(-1).gather(-1, chosen)[:, 0].tolist()
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs,
            stop_reason="completed",  # verl's vLLM server reports both stop and length as completed
            extra_fields={"global_steps": self.global_steps},
        )

    def load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        """Copy one bucket of the trainer's weights (HF names) into the model; an unknown name is an error."""
        state = self.model.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in state:
                    raise KeyError(f"the CPU rollout's model has no parameter {name!r} to load")
                state[name].copy_(tensor)
                self._updated.add(id(state[name]))

    def finish_weight_update(self, global_steps: int | None) -> None:
        """End of a sync: every parameter must have been sent (tied ones under either name)."""
        stale = [name for name, param in self.model.named_parameters() if id(param) not in self._updated]
        self._updated.clear()
        if stale:
            raise RuntimeError(f"the weight sync left {len(stale)} parameters of the CPU rollout unset: {stale[:5]}")
        if global_steps is not None:
            self.global_steps = int(global_steps)
        self._asked.clear()

    # verl's replica lifecycle: on CPU, weights and caches stay in host memory between phases.
    async def wake_up(self, tags: list[str] | None = None) -> None: ...

    async def sleep(self) -> None: ...

    async def clear_kv_cache(self) -> None: ...

    async def release_kv_cache(self) -> None: ...

    async def resume_kv_cache(self) -> None: ...

    async def abort_all_requests(self, reject_request: bool = False) -> dict:
        return {}  # one request at a time: nothing is in flight between calls

    async def resume_generation(self) -> None: ...

    async def start_profile(self, **kwargs) -> None: ...

    async def stop_profile(self) -> None: ...


class TransformersReplica(RolloutReplica):
    """verl's rollout replica on CPU: one `TransformersServer` actor (no CPU reserved: it only runs
    while the trainer waits for rollouts)."""

    async def launch_servers(self) -> None:
        server = cast(
            ActorHandle,
            ray.remote(TransformersServer)
            .options(name=server_name(self.replica_rank), num_cpus=0, max_concurrency=self.max_concurrency)
            .remote(self.config, self.model_config, self.replica_rank),
        )
        self.servers = [server]
        self._server_handle = server
        self._server_address = server_name(self.replica_rank)  # no HTTP endpoint: token-in/token-out only

    def rollout_worker_use_gpu(self) -> bool:
        return False


class TransformersServerAdapter(BaseRollout):
    """verl's rollout adapter in an actor worker: sends the trained weights to the replica's server.

    Every rank iterates the weights (gathering an FSDP shard is a collective); the replica's first
    rank sends them, in buckets of ``checkpoint_engine.update_weights_bucket_megabytes``.
    """

    def __init__(self, config, model_config, device_mesh, *args, **kwargs) -> None:
        super().__init__(config, model_config, device_mesh)
        replica_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        rank = int(os.environ["RANK"])
        self.replica_rank = rank // replica_size
        self.is_sender = rank % replica_size == 0
        self.bucket_bytes = self.config.checkpoint_engine.update_weights_bucket_megabytes << 20

    async def resume(self, tags: list[str]) -> None:
        """Weights and caches never leave host memory."""

    async def release(self) -> None:
        """Weights and caches never leave host memory."""

    async def update_weights(self, weights, wire_format: str = "named_tensors", **kwargs) -> None:
        """Gather ``weights`` ((name, tensor) pairs) and, on the sending rank, load them into the server;
        ``kwargs``: verl's ``global_steps`` (the step the weights come from) and ``peft_config`` (LoRA)."""
        if wire_format != "named_tensors":
            raise ValueError(f"the CPU rollout takes full named tensors, not wire_format={wire_format!r}")
        if kwargs.get("peft_config") is not None:
            raise ValueError("the CPU rollout syncs full weights: LoRA adapters are not supported")
        server = ray.get_actor(server_name(self.replica_rank)) if self.is_sender else None
        bucket: list[tuple[str, torch.Tensor]] = []
        size = 0
        for name, tensor in weights:
            if hasattr(tensor, "full_tensor"):  # an FSDP2 shard
                tensor = tensor.full_tensor()
            if server is None:
                continue
            bucket.append((name, tensor.detach().to("cpu", copy=True)))
            size += tensor.numel() * tensor.element_size()
            if size >= self.bucket_bytes:
                await server.load_weights.remote(bucket)
                bucket, size = [], 0
        if server is not None:
            if bucket:
                await server.load_weights.remote(bucket)
            await server.finish_weight_update.remote(kwargs.get("global_steps"))
