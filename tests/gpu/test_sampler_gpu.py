"""The Triton top-k / top-p / min-p kernel on a GPU: the direct computation's kept sets at tiny
and at real vocabulary sizes, the torch twin's bit for bit where no sum decides, and seeded
sampling through the Sampler alone and in a batch.

Run on the device machine: `python -m pytest -m gpu tests/gpu/test_sampler_gpu.py`.
"""
from __future__ import annotations

import pytest
import torch

from qinfer import ops
from qinfer.contracts.sampling_metadata import SamplingMetadata
from qinfer.executor.sampler import Sampler
from qinfer.ops.reference import top_k_top_p_min_p as torch_twin
from tests.unit.sampling_oracle import Case, assert_kept_as_expected, cases

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

VOCAB = 128256
NEG_INF = float("-inf")


def on_gpu(values):
    return None if values is None else values.cuda()


def kept_on_gpu(case: Case) -> torch.Tensor:
    assert ops.implementations("cuda")["top_k_top_p_min_p"] == "triton"
    logits = ops.top_k_top_p_min_p(case.logits.cuda(), on_gpu(case.top_k), on_gpu(case.top_p),
                                   on_gpu(case.min_p))
    return (logits > NEG_INF).cpu()


@pytest.mark.parametrize("case", cases(), ids=lambda case: case.name)
def test_small_vocabulary_cases(case):
    assert_kept_as_expected(kept_on_gpu(case), case, rounding=0.0 if case.exact else 1e-6)


def real_size_cases(num_rows: int = 4) -> list[Case]:
    g = torch.Generator().manual_seed(1)
    peaked = torch.randn(num_rows, VOCAB, generator=g) * 3          # a model's sharp distribution
    flat = torch.randn(num_rows, VOCAB, generator=g) * 0.8          # random weights: near uniform
    tied = (torch.randn(num_rows, VOCAB, generator=g) * 4).round() / 4
    top_p = torch.tensor([0.95, 0.5, 0.999, 1e-6])[:num_rows]
    top_k = torch.tensor([50, 1, 4000, VOCAB])[:num_rows]
    min_p = torch.tensor([0.05, 0.0, 0.001, 0.3])[:num_rows]
    return [Case("peaked top_p", peaked, None, top_p, None), Case("flat top_p", flat, None, top_p, None),
            Case("tied top_k", tied, top_k, None, None), Case("tied all three", tied, top_k, top_p, min_p),
            Case("flat all three", flat, top_k, top_p.flip(0), min_p)]


@pytest.mark.parametrize("case", real_size_cases(), ids=lambda case: case.name)
def test_real_vocabulary_cases(case):
    # float32 sums over 128k tokens: a token within 2e-5 of the top_p boundary may go either way
    assert_kept_as_expected(kept_on_gpu(case), case, rounding=2e-5)


def test_top_k_and_min_p_equal_the_torch_twin_bit_for_bit():
    g = torch.Generator(device="cuda").manual_seed(2)
    logits = (torch.randn(64, VOCAB, device="cuda", generator=g) * 4).round() / 8   # ties everywhere
    top_k = torch.randint(1, 3000, (64,), device="cuda", generator=g)
    min_p = torch.rand(64, device="cuda", generator=g) * 0.2
    got = ops.top_k_top_p_min_p(logits.clone(), top_k, None, min_p)
    assert torch.equal(got, torch_twin(logits, top_k, None, min_p))


def test_seeded_request_same_tokens_alone_and_in_a_batch():
    logits = torch.randn(8, VOCAB, device="cuda", generator=torch.Generator("cuda").manual_seed(3)) * 2

    def draws(rows: list[int], seeded: int) -> list[int]:
        sampler, generator = Sampler(torch.device("cuda"), seed=5), torch.Generator("cuda").manual_seed(11)
        md = SamplingMetadata(temperature=torch.full((len(rows),), 0.8, device="cuda"), all_greedy=False,
                              all_random=True, top_p=torch.full((len(rows),), 0.95, device="cuda"),
                              top_k=torch.full((len(rows),), 1000, device="cuda"), generators={seeded: generator})
        return [sampler(logits[rows], md).sampled_token_ids[seeded].item() for _ in range(20)]

    alone = draws([3], 0)
    assert alone == draws(list(range(8)), 3) == draws([5, 3, 0], 1)
    assert len(set(alone)) > 1


@pytest.mark.parametrize("split", [2, 3, 7])
@pytest.mark.parametrize("case", cases(), ids=lambda case: case.name)
def test_rows_split_over_programs_keep_what_the_direct_computation_keeps(case, split):
    # tiny blocks: each of a row's 2-5 chunks spans several blocks and the search many passes,
    # every decision crossing the programs' barrier
    from qinfer.ops.sampling_triton import top_k_top_p_min_p_triton

    logits = top_k_top_p_min_p_triton(case.logits.cuda(), on_gpu(case.top_k), on_gpu(case.top_p),
                                      on_gpu(case.min_p), block=16, num_pivots=4, num_warps=1, split=split)
    assert_kept_as_expected((logits > NEG_INF).cpu(), case, rounding=0.0 if case.exact else 1e-6)


@pytest.mark.parametrize("num_rows, split", [(1, 64), (7, 40), (2000, 16)])
def test_many_programs_equal_the_torch_twin_bit_for_bit(num_rows, split):
    # 2,000 rows x 16 programs: far more programs than the GPU holds at once (the ticket order
    # keeps each row's programs starting together); ties everywhere, so tie ranks cross chunks
    from qinfer.ops.sampling_triton import top_k_top_p_min_p_triton

    g = torch.Generator(device="cuda").manual_seed(4)
    logits = (torch.randn(num_rows, VOCAB, device="cuda", generator=g) * 4).round() / 8
    top_k = torch.randint(1, 30000, (num_rows,), device="cuda", generator=g)
    min_p = torch.rand(num_rows, device="cuda", generator=g) * 0.2
    got = top_k_top_p_min_p_triton(logits.clone(), top_k, None, min_p, split=split)
    assert torch.equal(got, torch_twin(logits, top_k, None, min_p))
