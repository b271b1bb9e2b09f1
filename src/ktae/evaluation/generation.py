"""Generation backends for evaluation: vLLM on a GPU, batched transformers anywhere.

Both tokenize prompts the same way (the tokenizer's default special tokens, as vLLM does for text
prompts), count a response's tokens including its end-of-sequence token, decode greedily at
temperature 0 and otherwise sample with exactly the temperature and top-p asked (no top-k, no
repetition penalty from the model's generation config), seeded.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ktae.models import resolve_model_source

#: The lowest sampling temperature accepted (0 is greedy): generation, and training's loss, divide the
#: logits by it, and below this the quotient overflows half precision into inf/NaN (vLLM raises lower
#: temperatures to the same floor).
MIN_TEMPERATURE = 0.01


@dataclass(frozen=True)
class Sampling:
    """How responses are drawn: temperature 0 is greedy (top_p unused); seed makes sampling repeatable."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


GREEDY = Sampling()


@dataclass(frozen=True)
class Generation:
    """One response. The generators know all of it; re-scored outputs (`ktae.evaluation.rescore`) may carry
    the text only, and the results leave what is not known out of the lengths and the truncated share."""

    text: str
    num_tokens: int | None  # response tokens, end of sequence included; None: not known
    finish_reason: str | None  # "stop" (end of sequence) or "length" (hit the token limit); None: not known


def check_model_source(model: str) -> None:
    """The model must be a hub id, a model folder, a .gguf file, ``smollm2`` or a PEFT adapter folder
    (`ktae.models.resolve_model_source`)."""
    resolve_model_source(model, weights=True)


def select_backend(name: str = "auto", model: str | None = None) -> str:
    """ "auto": vLLM when it is installed and a GPU is present, else transformers; a GGUF model
    (``model``) always goes to transformers, which dequantizes it, and so does a PEFT adapter, which
    transformers merges into its base."""
    if name not in ("auto", "vllm", "transformers"):
        raise ValueError(f"unknown backend {name!r}; choose auto, vllm or transformers")
    has_vllm = importlib.util.find_spec("vllm") is not None
    if name == "vllm" and not has_vllm:
        raise ValueError(
            "backend 'vllm': vllm is not installed (pip install 'ktae[vllm]'), or use --backend transformers"
        )
    source = resolve_model_source(model) if model is not None else None
    gguf = source is not None and source.gguf_file is not None
    if name == "vllm" and gguf:
        raise ValueError(f"the vllm backend does not load GGUF models such as {model!r}: use --backend transformers")
    adapter = source is not None and source.adapter is not None
    if name == "vllm" and adapter:
        raise ValueError(
            f"the vllm backend does not load a PEFT adapter such as {model!r}: evaluate the merged model "
            "(RUN_DIR/merged, written at the end of a LoRA run, or ktae.models.merge_adapter), "
            "or use --backend transformers (merges it in memory)"
        )
    if name != "auto":
        return name
    import torch

    return "vllm" if has_vllm and torch.cuda.is_available() and not gguf and not adapter else "transformers"


def check_device(device: str | None) -> None:
    """A torch device that exists on this machine (None: the default)."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r}: {e}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU build of torch" if torch.version.cuda is None else "no GPU visible"
            raise ValueError(f"device {device!r}: CUDA is not available ({build}, torch {torch.__version__})")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available")


def check_generator_options(backend: str, options: dict, model: str | None = None) -> str:
    """Validate ``make_generator``'s backend and options before anything loads; returns the backend."""
    backend = select_backend(backend, model)
    for name in ("batch_size", "tensor_parallel_size"):
        if name in options and not (isinstance(options[name], int) and options[name] >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {options[name]!r}")
    fraction = options.get("gpu_memory_utilization", 0.9)
    if not 0 < fraction <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {fraction}")
    if backend == "transformers":
        check_device(options.get("device"))
    return backend


class TransformersGenerator:
    """Batched ``model.generate`` with left padding; prompts sorted by length to pad little.

    Sampling is seeded at each ``generate`` call: the same seed, batch size, device and library
    versions give the same responses."""

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

    @classmethod
    def from_model(cls, model, tokenizer, *, batch_size: int = 8, max_model_len: int = 4096) -> TransformersGenerator:
        """A generator on a model already loaded, where it is (a model in training, between its steps): the
        caller puts it in eval mode and back. ``tokenizer``: left padding, pad and end tokens resolved."""
        from ktae.models import end_token_ids

        generator = cls.__new__(cls)
        generator.device, generator.batch_size, generator.max_model_len = model.device, batch_size, max_model_len
        generator.tokenizer, generator.model = tokenizer, model
        generator.eos_ids = set(end_token_ids(tokenizer, model.generation_config.eos_token_id))
        return generator

    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int,
        desc: str = "generating",
        *,
        samples: int = 1,
        sampling: Sampling = GREEDY,
    ) -> list[Generation]:
        """``samples`` responses per prompt, prompt-major (prompt 0's, then prompt 1's, ...)."""
        import torch
        from tqdm.auto import tqdm
        from transformers import GenerationConfig

        # Every decoding parameter that applies is set: transformers fills unset ones from the model's
        # own generation config (a checkpoint may ship top_k=20 or repetition_penalty=1.05).
        decoding = {
            "do_sample": sampling.temperature > 0,
            "num_beams": 1,
            "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0,
            "eos_token_id": sorted(self.eos_ids),
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if sampling.temperature > 0:
            decoding |= {
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "top_k": 0,
                "min_p": 0.0,
                "typical_p": 1.0,
            }
        prompt_ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        encoded = [ids for ids in prompt_ids for _ in range(samples)]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # stable: a prompt's samples stay in order
        results: dict[int, Generation] = {}  # by position in ``encoded``
        # a private generator state: the caller's random stream is left as it was
        cuda_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(sampling.seed)
            with tqdm(total=len(encoded), desc=desc, unit="response") as progress:
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
                            **inputs, generation_config=GenerationConfig(**decoding, max_new_tokens=budget)
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
        return [results[i] for i in range(len(encoded))]


class VLLMGenerator:
    """vLLM offline inference; each prompt's samples come from its own seed, so they do not depend
    on how vLLM batches the requests."""

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

    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int,
        desc: str = "generating",
        *,
        samples: int = 1,
        sampling: Sampling = GREEDY,
    ) -> list[Generation]:
        """``samples`` responses per prompt, prompt-major (prompt 0's, then prompt 1's, ...)."""
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=samples,
                temperature=sampling.temperature,
                top_p=sampling.top_p if sampling.temperature else 1.0,
                max_tokens=max_new_tokens,
                seed=(sampling.seed + i) % 2**63,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=True)
        return [
            Generation(sample.text, len(sample.token_ids), sample.finish_reason or "stop")
            for output in outputs
            for sample in sorted(output.outputs, key=lambda s: s.index)
        ]


def make_generator(model: str, backend: str = "auto", **options) -> TransformersGenerator | VLLMGenerator:
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
