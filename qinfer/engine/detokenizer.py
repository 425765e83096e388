"""Incremental detokenization and stop-string detection.

Text is decoded over a short sliding window of tokens (vLLM's prefix/read
offsets): the window gives merge-dependent tokens (leading spaces, byte pieces)
their context, and a window ending in an incomplete UTF-8 character ("\ufffd")
emits nothing until the character completes. Byte-level BPE tokenizers (GPT-2,
Llama 3, Qwen2) need no window: a token is a run of bytes, so an incremental
UTF-8 decoder, which holds an incomplete character back by itself, gives the
decoder's text (the window's text, for valid UTF-8) at about half the cost per
token, the window's two decodes being most of it. Most tokens are whole UTF-8
characters: with no character pending, such a token's text is a table lookup.
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
    them and decoding UTF-8 with U+FFFD for bad bytes, as the ByteLevel decoder does; `texts` holds
    each token's text when no character is pending, the detokenizer's fast path."""

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
        self.size = len(self.tokens)
        # Byte-level: each token's text after whole characters (None: it ends in an incomplete one).
        self.texts: list[Optional[str]] = [_text_alone(t) for t in self.tokens] if self.is_byte_level else []

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


def _text_alone(token: Optional[bytes]) -> Optional[str]:
    """What an incremental UTF-8 decoder with nothing pending makes of the token's bytes (bad bytes
    as U+FFFD), if that leaves nothing pending; None if the token ends in an incomplete character."""
    if token is None:
        return None
    text, num_decoded = codecs.utf_8_decode(token, "replace", False)
    return text if num_decoded == len(token) else None


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
        # Byte-level: decodes token bytes as they come (`pending`: the first bytes of a character
        # not complete yet); else the window below (tokens + offsets).
        self.byte_level = self.table.is_byte_level
        self.pending = b""
        self.tokens = self.table.to_tokens(prompt_token_ids[-(_NUM_CONTEXT_TOKENS + 1):])
        self.prefix_offset = max(len(self.tokens) - _NUM_CONTEXT_TOKENS, 0)
        self.read_offset = len(self.tokens)
        self.stop = list(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        # Streamed text stops this far short of the end: it could be the start of a stop string.
        self.num_held_back_chars = max(map(len, self.stop), default=1) - 1
        # Decoded, not taken yet: the held-back tail plus this step's text. The text taken before is
        # the caller's (the engine keeps it in the request's output).
        self.unsent = ""

    def update(self, new_token_ids: list[int], num_output_tokens: int = 0, min_tokens: int = 0) -> Optional[str]:
        """Decode new tokens; returns the stop string that matched, if any (text then ends before it)."""
        num_old_chars = len(self.unsent)
        self.unsent += self.decode(new_token_ids)
        if not self.stop or num_output_tokens < min_tokens:
            return None
        return self._find_stop(num_old_chars)

    def decode(self, new_token_ids: list[int]) -> str:
        """The text the new tokens complete; special ids and ids past the vocabulary are not text.

        Called alone (the engine's path when there are no stop strings), it is update() and
        take_new_text() in one: nothing to search, nothing held back.
        """
        if not self.byte_level:
            return self._decode_tokens(new_token_ids)
        table = self.table   # byte-level, inline: it runs per request per step
        new_text = ""
        for token_id in new_token_ids:
            if not 0 <= token_id < table.size:
                continue
            text = table.texts[token_id]
            if text is not None and not self.pending:
                new_text += text   # no character pending before it or after it: no decoder needed
            elif table.tokens[token_id] is not None:
                # As an incremental UTF-8 decoder: bad bytes become U+FFFD, an incomplete character waits.
                data = self.pending + table.tokens[token_id]
                text, num_decoded = codecs.utf_8_decode(data, "replace", False)
                self.pending = data[num_decoded:]
                new_text += text
        return new_text

    def _decode_tokens(self, token_ids: list[int]) -> str:
        """decode() for tokenizers that are not byte-level: through the window."""
        tokens, size = self.table.tokens, self.table.size
        new_text = ""
        for token_id in token_ids:
            token = tokens[token_id] if 0 <= token_id < size else None
            if token is not None:
                self.tokens.append(token)
                new_text += self._decode_window()
        return new_text

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
        return new_text
