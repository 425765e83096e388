"""The runner's TokenLogprobs made into vLLM's per-position dict[int, Logprob].

Ranks as vLLM's: the token at the position gets its rank in the whole vocabulary, the top-k
entries 1..k (the token, when among them, holds its top-k rank). decoded_token is the token
decoded alone (tokenizer.decode([id]), special tokens kept), cached per id.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Optional

from qinfer.engine.outputs import Logprob, PositionLogprobs
from qinfer.contracts.runner_output import TokenLogprobs


class LogprobsBuilder:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoded: dict[int, str] = {}

    def decode(self, token_id: int) -> str:
        text = self.decoded.get(token_id)
        if text is None:
            text = self.decoded[token_id] = self.tokenizer.decode([token_id])
        return text

    def position(self, entry: TokenLogprobs) -> PositionLogprobs:
        ranks = itertools.chain((entry.rank,), range(1, len(entry.token_ids)))
        return {token_id: Logprob(logprob, rank, self.decode(token_id))
                for token_id, logprob, rank in zip(entry.token_ids, entry.logprobs, ranks)}

    def positions(self, entries: Iterable[TokenLogprobs]) -> list[PositionLogprobs]:
        return [self.position(entry) for entry in entries]

    def prompt(self, entries: Iterable[TokenLogprobs]) -> list[Optional[PositionLogprobs]]:
        """Prompt logprobs: None for the first token, which nothing predicts."""
        return [None, *self.positions(entries)]
