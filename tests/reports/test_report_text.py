import pytest
from hypothesis import given, settings, strategies as st

from ktae.reports.rollouts import tokenize_rollouts
from ktae.reports.text import (
    BYTE_LEVEL,
    SENTENCEPIECE,
    TEXT,
    detect_piece_style,
    merge_pieces,
    piece_label,
    visible_whitespace,
)
from ktae.run_folder import RolloutRecord


def test_byte_level_pieces_become_text_with_spaces_and_newlines():
    pieces = ["Hello", "Ġworld", "Ċ", "ĊĊ", "ĉx", "Ġ=", "Ġ3"]
    assert merge_pieces(pieces, BYTE_LEVEL) == ["Hello", " world", "\n", "\n\n", "\tx", " =", " 3"]


def test_a_character_split_across_tokens_goes_to_the_token_that_completes_it():
    # "é" is C3 A9 ('Ã', '©'); "’" is E2 80 99 ('âĢ', 'Ļ'); "🙂" is F0 9F 99 82 ('ðŁ', 'Ļ', 'Ĥ').
    pieces = ["caf", "Ã", "©", "ĠâĢ", "Ļ", "ðŁ", "Ļ", "Ĥ", "!"]
    assert merge_pieces(pieces, BYTE_LEVEL) == ["caf", "", "é", " ", "’", "", "", "🙂", "!"]


def test_invalid_or_truncated_bytes_show_as_replacement_characters():
    assert merge_pieces(["a", "Ã"], BYTE_LEVEL) == ["a", "\ufffd"]  # a lead byte with nothing after it
    assert merge_pieces(["©", "b"], BYTE_LEVEL) == ["\ufffd", "b"]  # a continuation byte on its own


def test_special_tokens_are_kept_literally_and_flush_pending_bytes():
    assert merge_pieces(["Ġok", "<|im_end|>"], BYTE_LEVEL, ["<|im_end|>"]) == [" ok", "<|im_end|>"]
    assert merge_pieces(["Ã", "<|im_end|>"], BYTE_LEVEL, ["<|im_end|>"]) == ["", "\ufffd<|im_end|>"]


def test_sentencepiece_spaces_and_byte_fallback():
    pieces = ["▁The", "▁answer", "<0x0A>", "<0xE2>", "<0x80>", "<0x99>", "s"]
    assert merge_pieces(pieces, SENTENCEPIECE) == [" The", " answer", "\n", "", "", "’", "s"]


def test_decoded_pieces_pass_through_unchanged():
    pieces = ["The", " caf", "é", "\n", ""]
    assert merge_pieces(pieces, TEXT) == pieces


def test_detect_piece_style():
    assert detect_piece_style(["Let", "Ġx", "Ġ=", "Ċ"]) == BYTE_LEVEL
    assert detect_piece_style(["▁Let", "▁x"]) == SENTENCEPIECE
    assert detect_piece_style(["Let", " x", " =", "\n"]) == TEXT  # real spaces: already text
    # Without a space, tab or newline anywhere, byte-level and plain text cannot be told apart: text.
    assert detect_piece_style(["caf", "é"]) == TEXT
    assert detect_piece_style(["Ġa", "<|im end|>"], special_tokens=["<|im end|>"]) == BYTE_LEVEL


def test_labels_make_whitespace_and_partial_bytes_visible():
    assert piece_label("Ġthe", BYTE_LEVEL) == "␣the"
    assert piece_label("ĊĊ", BYTE_LEVEL) == "↵↵"
    assert piece_label("âĢ", BYTE_LEVEL) == "\\xe2\\x80"
    assert piece_label("<|endoftext|>", BYTE_LEVEL, ["<|endoftext|>"]) == "<|endoftext|>"
    assert visible_whitespace("") == "∅"
    with pytest.raises(ValueError, match="piece style"):
        merge_pieces(["a"], "wordpiece")


def test_tokenizer_style_is_read_off_the_vocabulary(byte_level_tokenizer):
    assert detect_piece_style(byte_level_tokenizer.get_vocab(), byte_level_tokenizer.all_special_tokens) == BYTE_LEVEL


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40))
def test_merged_pieces_concatenate_to_the_tokenizers_own_decoding(byte_level_tokenizer, text):
    ids = byte_level_tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = byte_level_tokenizer.convert_ids_to_tokens(ids)
    merged = merge_pieces(pieces, BYTE_LEVEL, byte_level_tokenizer.all_special_tokens)
    assert len(merged) == len(ids)
    assert "".join(merged) == byte_level_tokenizer.decode(ids) == text


@pytest.mark.parametrize("text", ["The answer is 42.", "Für 北京 🙂\n\tok  done", " leading space"])
def test_sentencepiece_token_ids_read_as_the_tokenizers_own_decoding(sentencepiece_tokenizer, text):
    ids = sentencepiece_tokenizer(text, add_special_tokens=False)["input_ids"]
    rollout = RolloutRecord(step=1, group="g", prompt="p", score=1.0, token_ids=ids)
    data = tokenize_rollouts([rollout], sentencepiece_tokenizer)
    assert (
        detect_piece_style(sentencepiece_tokenizer.get_vocab(), sentencepiece_tokenizer.all_special_tokens)
        == SENTENCEPIECE
    )
    assert len(data.texts[0]) == len(ids)
    assert "".join(data.texts[0]) == sentencepiece_tokenizer.decode(ids)
