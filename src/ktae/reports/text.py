"""Readable text from token pieces: merge byte-level BPE and SentencePiece pieces into real text.

A report shows one span per token, and the spans must read as the model's text. Tokenizers
store pieces in an encoded alphabet: byte-level BPE (GPT-2, Qwen, Llama 3) writes each byte as
a printable character ('Ġ' for a space, 'Ċ' for a newline, 'Ã©' for 'é'), SentencePiece
(Llama 2, Mistral) writes spaces as '▁' and raw bytes as '<0x0A>'. A character of several
UTF-8 bytes can be split across tokens; its text goes to the token that completes it, and the
tokens before it show nothing.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Iterable, Sequence

BYTE_LEVEL = "byte_level"
SENTENCEPIECE = "sentencepiece"
TEXT = "text"  # pieces are already decoded text
PIECE_STYLES = (BYTE_LEVEL, SENTENCEPIECE, TEXT)

_SENTENCEPIECE_SPACE = "\u2581"
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's fixed byte <-> character table, inverted (character -> byte).

    Printable Latin-1 bytes stand for themselves; the other 68 (control bytes, space, 0x7F-0xA0,
    0xAD) are shifted to U+0100 onwards, so 'Ġ' (U+0120) is the space and 'Ċ' (U+010A) the newline.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in characters:
            characters[byte] = chr(256 + shifted)
            shifted += 1
    return {character: byte for byte, character in characters.items()}


def detect_piece_style(pieces: Iterable[str], special_tokens: Iterable[str] = ()) -> str:
    """Which alphabet a collection of token pieces is written in: BYTE_LEVEL, SENTENCEPIECE or TEXT.

    Byte-level pieces use only the 256 characters of the byte table and, since real text has
    spaces or newlines, at least one shifted character (U+0100 and up); SentencePiece pieces
    carry '▁'. Anything else (e.g. pieces with real spaces) is already decoded text.
    """
    alphabet = _byte_level_alphabet()
    special = set(special_tokens)
    saw_shifted = saw_sentencepiece = False
    all_byte_level = True
    for piece in pieces:
        if piece in special:
            continue
        if _SENTENCEPIECE_SPACE in piece:
            saw_sentencepiece = True
        if all_byte_level:
            for character in piece:
                if character not in alphabet:
                    all_byte_level = False
                    break
                if ord(character) >= 256:
                    saw_shifted = True
    if saw_sentencepiece:
        return SENTENCEPIECE
    if all_byte_level and saw_shifted:
        return BYTE_LEVEL
    return TEXT


def _piece_bytes(piece: str, style: str) -> bytes:
    if style == BYTE_LEVEL:
        alphabet = _byte_level_alphabet()
        if all(character in alphabet for character in piece):
            return bytes(alphabet[character] for character in piece)
        return piece.encode("utf-8")  # an added token outside the byte table: literal text
    if style == SENTENCEPIECE:
        fallback = _BYTE_FALLBACK.fullmatch(piece)
        if fallback:
            return bytes([int(fallback.group(1), 16)])
        return piece.replace(_SENTENCEPIECE_SPACE, " ").encode("utf-8")
    return piece.encode("utf-8")


def merge_pieces(pieces: Sequence[str], style: str, special_tokens: Iterable[str] = ()) -> list[str]:
    """The text each token contributes, one string per piece; they concatenate to the decoded text.

    pieces: raw token pieces in ``style`` (see ``detect_piece_style``); special tokens (e.g.
    '<|im_end|>') are kept literally. A multi-byte character split across tokens is shown by
    the token that completes it; bytes that never form a valid character show as U+FFFD.
    """
    if style not in PIECE_STYLES:
        raise ValueError(f"unknown piece style {style!r}; choose one of {', '.join(PIECE_STYLES)}")
    if style == TEXT:
        return list(pieces)
    special = frozenset(special_tokens)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    cache: dict[str, bytes] = {}
    texts = []
    for piece in pieces:
        if piece in special:
            texts.append(decoder.decode(b"", final=True) + piece)
            decoder.reset()
            continue
        raw = cache.get(piece)
        if raw is None:
            raw = cache[piece] = _piece_bytes(piece, style)
        texts.append(decoder.decode(raw))
    if texts:
        texts[-1] += decoder.decode(b"", final=True)
    return texts


def piece_label(piece: str, style: str, special_tokens: Iterable[str] = ()) -> str:
    """A one-line label of a token for tables: its text with spaces, newlines and tabs made visible.

    Partial UTF-8 bytes are written as escapes (``\\xe2``).
    """
    if piece in frozenset(special_tokens) or style == TEXT:
        text = piece
    else:
        text = _piece_bytes(piece, style).decode("utf-8", errors="backslashreplace")
    return visible_whitespace(text)


def visible_whitespace(text: str) -> str:
    """Spaces as '␣', newlines as '↵', tabs as '⇥', carriage returns as '␍' (empty text as '∅')."""
    if not text:
        return "\u2205"
    return text.translate({ord(" "): "\u2423", ord("\n"): "\u21b5", ord("\t"): "\u21e5", ord("\r"): "\u240d"})
