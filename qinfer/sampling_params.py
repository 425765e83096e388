"""SamplingParams: how one prompt is continued. Semantics follow vLLM.

Light module: pydantic only, so producers can build and validate requests
without torch installed.
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SamplingParams(BaseModel):
    """Per-request sampling settings; invalid values raise a pydantic ValidationError."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(1, ge=1, le=128, description="Number of completions per prompt.")
    temperature: float = Field(1.0, ge=0.0, le=100.0, description="0 means greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus mass kept.")
    top_k: int = Field(-1, description="Keep the k most likely tokens; -1 (or 0) is off.")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="Drop tokens below min_p * p(top token).")
    seed: Optional[int] = Field(None, ge=0, lt=2**63, description="Per-request RNG seed.")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0,
                                      description=">1 discourages tokens already in prompt or output.")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0,
                                    description="Subtracted once from logits of tokens already generated.")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0,
                                     description="Subtracted per occurrence in the generated tokens.")
    stop: list[str] = Field(default_factory=list, description="Stop strings; excluded from the text.")
    include_stop_str_in_output: bool = False
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    max_tokens: int = Field(16, ge=1, description="Upper bound on generated tokens.")
    min_tokens: int = Field(0, ge=0, description="EOS and stop ids are masked until this many tokens.")
    logprobs: Optional[int] = Field(None, ge=0, le=20,
                                    description="Return this many top logprobs per generated token "
                                                "(plus the sampled token's own).")
    prompt_logprobs: Optional[int] = Field(None, ge=0, le=20,
                                           description="Return this many top logprobs per prompt token "
                                                       "(plus the prompt token's own); the first is None.")

    @field_validator("top_k")
    @classmethod
    def _top_k_valid(cls, v: int) -> int:
        if v < -1:
            raise ValueError("top_k must be -1 (off), 0 (off) or a positive integer")
        return -1 if v == 0 else v

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, v):
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        return v

    @field_validator("stop")
    @classmethod
    def _stop_non_empty(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):
            raise ValueError("stop strings must be non-empty")
        return v

    @field_validator("stop_token_ids")
    @classmethod
    def _stop_ids_non_negative(cls, v: list[int]) -> list[int]:
        if any(t < 0 for t in v):
            raise ValueError("stop_token_ids must be non-negative token ids")
        return v

    @model_validator(mode="after")
    def _min_le_max(self) -> "SamplingParams":
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        return self

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0
