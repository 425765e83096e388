"""The kept sets of min-p / top-k / top-p computed directly, row by row in float64, and the
cases every implementation of qinfer.ops.top_k_top_p_min_p is checked on (torch on the
CPU, Triton under the interpreter, Triton on the GPU)."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np
import torch

NEG_INF = float("-inf")


class Case(NamedTuple):
    name: str
    logits: torch.Tensor                 # [S, V] float32
    top_k: Optional[torch.Tensor]        # [S] long
    top_p: Optional[torch.Tensor]        # [S] float32
    min_p: Optional[torch.Tensor]        # [S] float32
    exact: bool = False                  # every sum is exact in float32: no boundary margin needed


def kept_ids(row: np.ndarray, top_k: Optional[int], top_p: Optional[float],
             min_p: Optional[float]) -> tuple[np.ndarray, dict[int, float]]:
    """The kept token ids of one row (float64 [V]), and per top-p candidate after the first how
    far the mass ranked before it lies from top_p: within float32 rounding of 0, implementations
    may decide either way."""
    order = np.lexsort((np.arange(len(row)), -row))                # by logit, ties by id
    ratio = np.exp(row[order] - row.max())                         # p_i / p_max, ranked
    kept = order if min_p is None else order[ratio >= min_p]
    ratio = ratio if min_p is None else ratio[ratio >= min_p]
    if top_k is not None:
        kept, ratio = kept[:top_k], ratio[:top_k]
    distance: dict[int, float] = {}
    if top_p is not None and top_p < 1:
        mass_before = np.concatenate(([0.0], np.cumsum(ratio / ratio.sum())[:-1]))
        num_kept = max(1, int((mass_before < top_p).sum()))        # the first token always stays
        distance = dict(zip(kept[1:].tolist(), np.abs(mass_before[1:] - top_p).tolist()))
        kept = kept[:num_kept]
    return kept, distance


def expected_mask(case: Case) -> tuple[torch.Tensor, float]:
    """[S, V] bool kept mask of the case and its smallest boundary distance."""
    mask = torch.zeros(case.logits.shape, dtype=torch.bool)
    margin = math.inf
    for r, row in enumerate(case.logits.double().numpy()):
        kept, distance = kept_ids(row, _at(case.top_k, r), _at(case.top_p, r), _at(case.min_p, r))
        mask[r, kept] = True
        margin = min([margin, *distance.values()])
    return mask, margin


def assert_kept_as_expected(kept: torch.Tensor, case: Case, rounding: float) -> None:
    """kept [S, V] bool equals the direct computation, except for tokens whose top-p boundary
    distance is below `rounding` (where float32 sums in another order may decide otherwise)."""
    for r, row in enumerate(case.logits.double().numpy()):
        ids, distance = kept_ids(row, _at(case.top_k, r), _at(case.top_p, r), _at(case.min_p, r))
        differing = set(kept[r].nonzero().flatten().tolist()) ^ set(ids.tolist())
        outside = [i for i in differing if distance.get(i, math.inf) >= rounding]
        assert not outside, f"{case.name}: row {r} keeps {len(ids)} ids directly, differs at {sorted(outside)[:8]}"


def _at(values: Optional[torch.Tensor], row: int):
    return None if values is None else values[row].item()


def cases(vocab_size: int = 70, num_rows: int = 6, seed: int = 0) -> list[Case]:
    g = torch.Generator().manual_seed(seed)
    v, s = vocab_size, num_rows

    def randn(scale=2.0):
        return torch.randn(s, v, generator=g) * scale

    def tied():  # values on a 0.5 grid: many equal logits, at every boundary
        return (randn(1.5) * 2).round() / 2

    k = torch.tensor([1, 2, 5, v // 3, v - 1, v] * s)[:s]
    p = torch.tensor([1e-7, 0.3, 0.5, 0.9, 0.95, 0.999999] * s)[:s]
    min_p = torch.tensor([0.0, 0.01, 0.1, 0.5, 1.0, 0.05] * s)[:s]
    with_banned = randn()
    with_banned[:, ::7] = NEG_INF                       # min_tokens bans: -inf before the mask
    signed_zeros = torch.zeros(s, v)
    signed_zeros[:, 1::2] = -0.0                        # -0.0 == 0.0: equal logits, ranked by id
    signed_zeros[:, v // 2:] = torch.randn(s, v - v // 2, generator=g) * 1e-3
    uniform = torch.zeros(s, 64)                        # probabilities 1/64, 1/8, 1/4: exact sums
    return [
        Case("top_k", randn(), k, None, None),
        Case("top_k ties", tied(), k, None, None),
        Case("k >= vocab and k = 1", randn(), torch.tensor([v, v + 5, 1, 1, v, 3])[:s], None, None),
        Case("top_p", randn(), None, p, None),
        Case("top_p ties", tied(), None, p, None),
        Case("top_p flat", randn(0.3), None, p, None),
        Case("top_p 1 is off", randn(), None, torch.ones(s), None),
        Case("min_p", randn(), None, None, min_p),
        Case("min_p ties", tied(), None, None, min_p),
        Case("all three", randn(), torch.tensor([v, v - 1, 30, 20, 10, 3])[:s],
             torch.tensor([0.9, 0.95, 0.8, 0.99, 0.5, 0.97])[:s],
             torch.tensor([0.0, 0.001, 0.01, 0.02, 0.0, 0.005])[:s]),
        Case("all three, ties", tied(), k, p.flip(0), min_p),
        Case("banned tokens", with_banned, k, p, min_p),
        Case("signed zeros", signed_zeros, torch.tensor([1, 2, 3, v // 2, 5, v])[:s],
             torch.tensor([0.3, 0.5, 0.9, 0.1, 1.0, 0.6])[:s], None),
        Case("uniform: mass boundaries exactly at top_p", uniform, torch.tensor([64, 4, 4, 8, 64, 64])[:s],
             torch.tensor([0.5, 0.5, 0.75, 0.25, 0.125, 1.0])[:s], None, exact=True),
    ]
