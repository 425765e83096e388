"""Incremental detokenization and stop-string detection.

Text is decoded over a short sliding window of tokens (vLLM's prefix/read
offsets): the window gives merge-dependent tokens (leading spaces, byte pieces)
their context, and a window ending in an incomplete UTF-8 character ("\ufffd")
emits nothing until the character completes.
"""
from __future__ import annotations

from typing import Optional

# Prompt tokens kept as left context for the first output tokens.
_NUM_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], stop: list[str] = (),
                 include_stop_str_in_output: bool = False):
        self.tokenizer = tokenizer
        self.special_ids = set(tokenizer.all_special_ids)
        self.tokens = self._to_tokens(prompt_token_ids[-(_NUM_CONTEXT_TOKENS + 1):])
        self.prefix_offset = max(len(self.tokens) - _NUM_CONTEXT_TOKENS, 0)
        self.read_offset = len(self.tokens)
        self.stop = list(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        # Streamed text stops this far short of the end: it could be the start of a stop string.
        self.num_held_back_chars = max(map(len, self.stop), default=1) - 1
        self.output_text = ""
        self.num_sent_chars = 0

    def _to_tokens(self, token_ids: list[int]) -> list[str]:
        kept = [t for t in token_ids if t not in self.special_ids]
        return self.tokenizer.convert_ids_to_tokens(kept)

    def update(self, new_token_ids: list[int], num_output_tokens: int = 0, min_tokens: int = 0) -> Optional[str]:
        """Decode new tokens; returns the stop string that matched, if any (text then ends before it)."""
        num_old_chars = len(self.output_text)
        for token in self._to_tokens(new_token_ids):
            self.tokens.append(token)
            self.output_text += self._decode_window()
        if not self.stop or num_output_tokens < min_tokens:
            return None
        return self._find_stop(num_old_chars)

    def _decode_window(self) -> str:
        to_string = self.tokenizer.convert_tokens_to_string
        prefix_text = to_string(self.tokens[self.prefix_offset:self.read_offset])
        new_text = to_string(self.tokens[self.prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        return new_text[len(prefix_text):]

    def _find_stop(self, num_old_chars: int) -> Optional[str]:
        # A match can start in old text: up to len(stop) - 1 chars before the new ones.
        start = max(0, num_old_chars - self.num_held_back_chars)
        matches = [(self.output_text.find(stop, start), stop) for stop in self.stop]
        matches = [(index, stop) for index, stop in matches if index >= 0]
        if not matches:
            return None
        index, stop = min(matches, key=lambda match: match[0])
        end = index + len(stop) if self.include_stop_str_in_output else index
        self.output_text = self.output_text[:end]
        return stop

    def take_new_text(self, finished: bool) -> str:
        """Text not streamed yet; while running, keep back what could still become a stop string."""
        end = len(self.output_text)
        if not finished and self.stop:
            end = max(self.num_sent_chars, end - self.num_held_back_chars)
        new_text = self.output_text[self.num_sent_chars:end]
        self.num_sent_chars = end
        return new_text
