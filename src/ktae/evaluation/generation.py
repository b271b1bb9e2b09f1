"""Greedy generation backends for evaluation: vLLM on a GPU, batched transformers anywhere.

Both tokenize prompts the same way (the tokenizer's default special tokens, as vLLM does for text
prompts) and count a response's tokens including its end-of-sequence token.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ktae.models import resolve_model_source


@dataclass(frozen=True)
class Generation:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (hit the token limit)


def check_model_source(model: str) -> None:
    """The model must be a hub id, a model folder, a .gguf file or ``smollm2`` (`ktae.models.resolve_model_source`)."""
    resolve_model_source(model, weights=True)


def select_backend(name: str = "auto", model: str | None = None) -> str:
    """ "auto": vLLM when it is installed and a GPU is present, else transformers; a GGUF model
    (``model``) always goes to transformers, which dequantizes it."""
    if name not in ("auto", "vllm", "transformers"):
        raise ValueError(f"unknown backend {name!r}; choose auto, vllm or transformers")
    gguf = model is not None and resolve_model_source(model).gguf_file is not None
    if name == "vllm" and gguf:
        raise ValueError(f"the vllm backend does not load GGUF models such as {model!r}: use --backend transformers")
    if name != "auto":
        return name
    import torch

    vllm = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    return "vllm" if vllm and not gguf else "transformers"


class TransformersGenerator:
    """Batched greedy ``model.generate`` with left padding; prompts sorted by length to pad little."""

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 8,
        max_model_len: int = 4096,
        device: str | None = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ):
        import torch

        from ktae.models import (
            default_dtype,
            end_token_ids,
            load_causal_lm,
            load_tokenizer,
        )

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.max_model_len = max_model_len
        self.tokenizer = load_tokenizer(model)  # left padding, pad and end tokens resolved
        self.model = load_causal_lm(
            model,
            self.tokenizer,
            dtype=default_dtype(self.device) if dtype == "auto" else dtype,
            trust_remote_code=trust_remote_code,
        )
        self.model.to(self.device).eval()
        self.eos_ids = set(end_token_ids(self.tokenizer, self.model.generation_config.eos_token_id))

    def generate(self, prompts: list[str], max_new_tokens: int, desc: str = "generating") -> list[Generation]:
        import torch
        from tqdm.auto import tqdm

        encoded = [self.tokenizer(p)["input_ids"] for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        results: list[Generation | None] = [None] * len(prompts)
        with tqdm(total=len(prompts), desc=desc, unit="prompt") as progress:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                longest = max(len(encoded[i]) for i in batch)
                budget = min(max_new_tokens, self.max_model_len - longest)
                if budget <= 0:
                    raise ValueError(
                        f"a prompt of {longest} tokens leaves no room in the {self.max_model_len}-token context"
                    )
                inputs = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt").to(
                    self.device
                )
                with torch.inference_mode():
                    output = self.model.generate(
                        **inputs,
                        max_new_tokens=budget,
                        do_sample=False,
                        pad_token_id=self.tokenizer.pad_token_id,
                        eos_token_id=sorted(self.eos_ids),
                    )
                for row, i in enumerate(batch):
                    new_tokens = output[row, inputs["input_ids"].shape[1] :].tolist()
                    end = next((k for k, t in enumerate(new_tokens) if t in self.eos_ids), None)
                    tokens = new_tokens if end is None else new_tokens[: end + 1]
                    results[i] = Generation(
                        text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                        num_tokens=len(tokens),
                        finish_reason="length" if end is None else "stop",
                    )
                progress.update(len(batch))
        return results


class VLLMGenerator:
    """vLLM offline inference, temperature 0 (greedy), one sample per prompt."""

    def __init__(
        self,
        model: str,
        *,
        max_model_len: int = 4096,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        seed: int = 0,
        trust_remote_code: bool = False,
    ):
        from vllm import LLM

        self.llm = LLM(
            model=model,
            dtype=dtype,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            trust_remote_code=trust_remote_code,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[str], max_new_tokens: int, desc: str = "generating") -> list[Generation]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, n=1)
        outputs = self.llm.generate(prompts, params, use_tqdm=True)
        return [
            Generation(o.outputs[0].text, len(o.outputs[0].token_ids), o.outputs[0].finish_reason or "stop")
            for o in outputs
        ]


def make_generator(model: str, backend: str = "auto", **options):
    """The generator for ``backend`` ("auto", "vllm", "transformers"); options go to its constructor
    (batch_size and device only apply to transformers, tensor_parallel_size and seed to vLLM)."""
    backend = select_backend(backend, model)
    if backend == "vllm":
        for key in ("batch_size", "device"):
            options.pop(key, None)
        return VLLMGenerator(model, **options)
    for key in ("tensor_parallel_size", "gpu_memory_utilization", "seed"):
        options.pop(key, None)
    return TransformersGenerator(model, **options)
