"""Incremental detokenization and stop-string detection.

Text is decoded over a short sliding window of tokens (vLLM's prefix/read
offsets): the window gives merge-dependent tokens (leading spaces, byte pieces)
their context, and a window ending in an incomplete UTF-8 character ("\ufffd")
emits nothing until the character completes. Byte-level BPE tokenizers (GPT-2,
Llama 3, Qwen2) need no window: a token is a run of bytes, so an incremental
UTF-8 decoder, which holds an incomplete character back by itself, gives the
decoder's text (the window's text, for valid UTF-8) at about half the cost per
token, the window's two decodes being most of it.
"""
from __future__ import annotations

import codecs
import weakref
from typing import Callable, Optional

# Prompt tokens kept as left context for the first output tokens.
_NUM_CONTEXT_TOKENS = 5


class _TokenTable:
    """Per tokenizer, built once: every id's token (None for special ids) and `decode`, which turns
    a list of those tokens into text, as the tokenizer's decoder would. The window runs it twice per
    generated token, so it calls the Rust decoder directly (the transformers wrappers cost ~3x the
    call). For byte-level BPE (GPT-2, Llama 3, Qwen2) a token is its bytes, and decoding is joining
    them and decoding UTF-8 with U+FFFD for bad bytes, as the ByteLevel decoder does."""

    def __init__(self, tokenizer):
        special_ids = set(tokenizer.all_special_ids)
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = backend.decoder if backend is not None else None
        self.is_byte_level = _is_byte_level(decoder)
        if self.is_byte_level:
            tokens = [_byte_level_bytes(t) for t in tokens]
            self.decode: Callable[[list], str] = _decode_bytes
        else:
            self.decode = decoder.decode if decoder is not None else tokenizer.convert_tokens_to_string
        self.tokens: list = [None if i in special_ids else t for i, t in enumerate(tokens)]

    def to_tokens(self, token_ids: list[int]) -> list:
        """Tokens of the ids that are text (special ids and ids past the vocabulary dropped)."""
        table, size = self.tokens, len(self.tokens)
        return [token for token in (table[t] if 0 <= t < size else None for t in token_ids) if token is not None]


def _is_byte_level(decoder) -> bool:
    from tokenizers import decoders

    return isinstance(decoder, decoders.ByteLevel)


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character of each byte, reversed: char -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def _byte_level_bytes(token: Optional[str], alphabet: dict[str, int] = _byte_level_alphabet()) -> Optional[bytes]:
    """The bytes the ByteLevel decoder makes of a token: its characters mapped back to bytes or,
    when one is outside the alphabet (an added token), the token's own UTF-8 (as tokenizers does)."""
    if token is None:
        return None
    try:
        return bytes(alphabet[char] for char in token)
    except KeyError:
        return token.encode()


def _decode_bytes(tokens: list[bytes]) -> str:
    return b"".join(tokens).decode("utf-8", "replace")


_TABLES: "weakref.WeakKeyDictionary[object, _TokenTable]" = weakref.WeakKeyDictionary()


def token_table(tokenizer) -> _TokenTable:
    table = _TABLES.get(tokenizer)
    if table is None:
        table = _TABLES[tokenizer] = _TokenTable(tokenizer)
    return table


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], stop: list[str] = (),
                 include_stop_str_in_output: bool = False):
        self.table = token_table(tokenizer)
        # Byte-level: decodes token bytes as they come; else the window below (tokens + offsets).
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace") if self.table.is_byte_level else None
        self.tokens = self.table.to_tokens(prompt_token_ids[-(_NUM_CONTEXT_TOKENS + 1):])
        self.prefix_offset = max(len(self.tokens) - _NUM_CONTEXT_TOKENS, 0)
        self.read_offset = len(self.tokens)
        self.stop = list(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        # Streamed text stops this far short of the end: it could be the start of a stop string.
        self.num_held_back_chars = max(map(len, self.stop), default=1) - 1
        # The text lives in two parts so a step touches only the short one: `unsent` (decoded, not yet
        # taken: the held-back tail plus this step's text) and the chunks taken before. A growing
        # `str +=` would copy the whole output on every token.
        self.unsent = ""
        self.sent_chunks: list[str] = []

    @property
    def output_text(self) -> str:
        return "".join(self.sent_chunks) + self.unsent

    def update(self, new_token_ids: list[int], num_output_tokens: int = 0, min_tokens: int = 0) -> Optional[str]:
        """Decode new tokens; returns the stop string that matched, if any (text then ends before it)."""
        num_old_chars = len(self.unsent)
        table = self.table.tokens
        for token_id in new_token_ids:
            token = table[token_id] if 0 <= token_id < len(table) else None
            if token is None:   # special ids and ids past the vocabulary are not text
                continue
            if self.utf8 is not None:
                new_text = self.utf8.decode(token)
            else:
                self.tokens.append(token)
                new_text = self._decode_window()
            if new_text:
                self.unsent += new_text
        if not self.stop or num_output_tokens < min_tokens:
            return None
        return self._find_stop(num_old_chars)

    def _decode_window(self) -> str:
        tokens, prefix_offset, read_offset = self.tokens, self.prefix_offset, self.read_offset
        to_string = self.table.decode
        prefix_text = to_string(tokens[prefix_offset:read_offset])
        new_text = to_string(tokens[prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text[-1] == "\ufffd":
            return ""
        self.prefix_offset, self.read_offset = read_offset, len(tokens)
        return new_text[len(prefix_text):]

    def _find_stop(self, num_old_chars: int) -> Optional[str]:
        """Search `unsent`: a match can start up to len(stop) - 1 chars before the new text, and
        take_new_text holds back that many, so every possible start is still unsent."""
        start = max(0, num_old_chars - self.num_held_back_chars)
        index, first_stop = -1, None   # the earliest match; the first listed stop on a tie
        for stop in self.stop:
            found = self.unsent.find(stop, start)
            if found >= 0 and (first_stop is None or found < index):
                index, first_stop = found, stop
        if first_stop is None:
            return None
        end = index + len(first_stop) if self.include_stop_str_in_output else index
        self.unsent = self.unsent[:end]
        return first_stop

    def take_new_text(self, finished: bool) -> str:
        """Text not streamed yet; while running, keep back what could still become a stop string."""
        if finished or not self.stop:
            new_text, self.unsent = self.unsent, ""
        else:
            end = max(0, len(self.unsent) - self.num_held_back_chars)
            new_text, self.unsent = self.unsent[:end], self.unsent[end:]
        if new_text:
            self.sent_chunks.append(new_text)
            if len(self.sent_chunks) >= 64:   # bounded list; joining every 64 chunks amortizes the copy
                self.sent_chunks = ["".join(self.sent_chunks)]
        return new_text
