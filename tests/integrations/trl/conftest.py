import pytest
from trl_tiny import build_model, build_tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2 policy saved in Hugging Face format (GRPO's KL reference loads it by path).

    Pass ``processing_class=build_tokenizer()`` with it: loading the word-level tokenizer back from
    disk gives a byte-level Qwen2Tokenizer (the model type decides the class in transformers 5).
    """
    path = tmp_path_factory.mktemp("tiny_qwen2")
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(path)
    return str(path)
