"""Sampler against direct computations on the logits, and seeded sampling through the runner."""
from __future__ import annotations

import pytest
import torch

from qinfer.contracts.sampling_metadata import SamplingMetadata
from qinfer.executor.sampler import Sampler, apply_penalties, greedy
from qinfer.ops.reference import top_k_top_p_min_p
from qinfer.sampling_params import SamplingParams
from tests.unit.runner_driver import RunnerDriver, make_runner
from tests.unit.sampling_oracle import assert_kept_as_expected, cases

VOCAB = 40


def logits_batch(num_rows: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def metadata(num_rows: int, temperature: float = 1.0, **fields) -> SamplingMetadata:
    md = SamplingMetadata(temperature=torch.full((num_rows,), temperature), all_greedy=temperature == 0)
    for name, value in fields.items():
        setattr(md, name, value)
    return md


def test_greedy_is_argmax_and_top_k_1_is_greedy():
    logits = logits_batch()
    sampler = Sampler(torch.device("cpu"), seed=0)
    assert torch.equal(sampler(logits, metadata(4, 0.0)).sampled_token_ids, logits.argmax(-1))
    top_k_1 = metadata(4, 0.8, top_k=torch.ones(4, dtype=torch.long))
    assert torch.equal(sampler(logits, top_k_1).sampled_token_ids, logits.argmax(-1))


@pytest.mark.parametrize("case", cases(), ids=lambda case: case.name)
def test_top_k_top_p_min_p_keep_what_the_direct_computation_keeps(case):
    kept = top_k_top_p_min_p(case.logits.clone(), case.top_k, case.top_p, case.min_p) > float("-inf")
    assert_kept_as_expected(kept, case, rounding=0.0 if case.exact else 1e-6)


def test_penalties_follow_vllm_definitions():
    logits = logits_batch(2)
    prompt = [[3, 4, VOCAB], [5, VOCAB, VOCAB]]       # padded with VOCAB
    output = [[4, 7, 7], [9, 9, 9]]
    rep, presence, frequency = [1.5, 2.0], [0.5, -0.3], [0.25, 0.1]
    md = metadata(2, repetition_penalty=torch.tensor(rep), presence_penalty=torch.tensor(presence),
                  frequency_penalty=torch.tensor(frequency), prompt_token_ids=torch.tensor(prompt),
                  output_token_ids=torch.tensor(output))
    expected = logits.clone()
    for row in range(2):
        for token in set(prompt[row] + output[row]) - {VOCAB}:
            value = expected[row, token]
            expected[row, token] = value / rep[row] if value > 0 else value * rep[row]
        for token in set(output[row]):
            expected[row, token] -= frequency[row] * output[row].count(token) + presence[row]
    torch.testing.assert_close(apply_penalties(logits, md), expected)


FILTERS = {"none": {}, "top_k + top_p + min_p": dict(top_k=[VOCAB, 20, 5], top_p=[0.9, 0.95, 0.6],
                                                     min_p=[0.0, 0.01, 0.02])}


@pytest.mark.parametrize("filters", FILTERS.values(), ids=FILTERS.keys())
def test_seeded_row_reproduces_alone_and_in_batch(filters):
    logits = logits_batch(3)

    def draws(rows: list[int], seeded_row_in_batch: int) -> list[int]:
        sampler = Sampler(torch.device("cpu"), seed=123)
        generator = torch.Generator().manual_seed(7)
        per_row = {name: torch.tensor(values)[rows] for name, values in filters.items()}
        result = []
        for _ in range(20):
            md = metadata(len(rows), generators={seeded_row_in_batch: generator}, **per_row)
            result.append(sampler(logits[rows], md).sampled_token_ids[seeded_row_in_batch].item())
        return result

    alone = draws([1], 0)
    assert alone == draws([0, 1, 2], 1) == draws([2, 0, 1], 2)
    assert len(set(alone)) > 1  # really random


def test_sampling_frequencies_follow_softmax_with_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    counts = torch.bincount(Sampler(torch.device("cpu"), 0)(logits, metadata(20000, 0.7)).sampled_token_ids,
                            minlength=4)
    torch.testing.assert_close(counts / 20000, (logits[0] / 0.7).softmax(-1), atol=0.015, rtol=0)


def test_logprobs_are_raw_log_softmax():
    logits = logits_batch()
    logits[0, 1] = logits[0].max() + 0.5   # raw argmax of row 0 is a prompt token: penalized away
    md = metadata(4, 0.0, max_num_logprobs=5, repetition_penalty=torch.full((4,), 2.0),
                  presence_penalty=torch.zeros(4), frequency_penalty=torch.zeros(4),
                  prompt_token_ids=torch.tensor([[0, 1]] * 4), output_token_ids=torch.tensor([[2]] * 4))
    out = Sampler(torch.device("cpu"), 0)(logits, md)
    logprobs = logits.log_softmax(-1)
    sampled = out.sampled_token_ids
    torch.testing.assert_close(out.logprobs.logprobs[:, 0], logprobs.gather(1, sampled[:, None])[:, 0])
    torch.testing.assert_close(out.logprobs.logprobs[:, 1:], logprobs.topk(5).values)
    assert torch.equal(out.logprobs.token_ids[:, 0], sampled)
    assert torch.equal(out.logprobs.token_ids[:, 1:], logprobs.topk(5).indices)
    # The sampled token's rank in the full vocabulary, 1-based: one plus the tokens more likely.
    expected_ranks = [1 + int((row > row[t]).sum()) for row, t in zip(logprobs, sampled.tolist())]
    assert out.logprobs.ranks.tolist() == expected_ranks
    assert max(expected_ranks) > 1   # the penalties moved some choices off the raw argmax


def test_banned_tokens_are_never_sampled():
    logits = logits_batch(2)
    logits[:, 1] = 100.0  # token 1 ("EOS") dominates
    md = metadata(2, 1.0, banned_token_ids=[(0, [1, 5])])
    sampled = Sampler(torch.device("cpu"), 0)(logits, md).sampled_token_ids
    assert sampled[0].item() not in (1, 5) and sampled[1].item() == 1


# ---- fast paths: the same tokens as the general path --------------------------------------

def test_all_greedy_fast_path_is_argmax_of_the_raw_dtype_without_copies():
    logits = logits_batch().to(torch.bfloat16)
    md = metadata(4, 0.0)
    assert Sampler.process_logits(logits, md) is logits  # no stage ran: no float copy
    fast = Sampler(torch.device("cpu"), 0)(logits, md).sampled_token_ids
    md.all_greedy = False  # the mixed path: greedy argmax selected per row
    general = Sampler(torch.device("cpu"), 0)(logits, md).sampled_token_ids
    assert torch.equal(fast, logits.float().argmax(-1)) and torch.equal(fast, general)


def test_greedy_widens_reduced_precision_logits_and_keeps_the_first_of_ties():
    logits = torch.full((2, VOCAB), -1.0, dtype=torch.bfloat16)
    logits[0, [5, 9]] = 1.0
    logits[1, [7, 8, 30]] = 2.0
    assert greedy(logits).tolist() == [5, 7] == logits.argmax(-1).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_random_fast_path_draws_what_the_mixed_path_draws(dtype):
    logits = logits_batch(6).to(dtype)
    temperature = torch.tensor([0.5, 1.0, 1.3, 0.7, 2.0, 1.0])
    draws = {}
    for all_random in (True, False):
        sampler, generator = Sampler(torch.device("cpu"), 3), torch.Generator().manual_seed(9)
        md = SamplingMetadata(temperature=temperature, all_greedy=False, all_random=all_random,
                              generators={2: generator})
        draws[all_random] = torch.stack([sampler(logits, md).sampled_token_ids for _ in range(10)])
    assert torch.equal(draws[True], draws[False])
    assert len(set(draws[True][:, 1].tolist())) > 1  # really random


def test_mixed_batch_greedy_rows_take_the_argmax():
    logits = logits_batch(4)
    md = SamplingMetadata(temperature=torch.tensor([0.0, 1.0, 0.0, 1.5]), all_greedy=False)
    for _ in range(5):
        sampled = Sampler(torch.device("cpu"), 1)(logits, md).sampled_token_ids
        assert sampled[0] == logits[0].argmax() and sampled[2] == logits[2].argmax()


# ---- through the runner ---------------------------------------------------------------------

SEEDED = SamplingParams(temperature=1.0, seed=42, max_tokens=16, logprobs=3)
OTHER = SamplingParams(temperature=0.9, top_p=0.9, repetition_penalty=1.2)


def run_seeded(model_dir, others: int, preempt_at: int | None = None) -> tuple[list[int], list]:
    driver = RunnerDriver(make_runner(model_dir))
    driver.add("seeded", [0, 5, 6, 7, 8], SEEDED)
    for i in range(others):
        driver.add(f"other{i}", [0, 9 + i, 10, 11], OTHER)
    logprobs = []
    for step in range(12):
        if step == preempt_at:
            driver.preempt("seeded")
        out = driver.step(driver.schedule(token_budget=6))
        logprobs += [lp for req_id, lp in zip(out.req_ids, out.logprobs) if req_id == "seeded" and lp]
    return driver.requests["seeded"].output, logprobs


def test_seeded_request_same_tokens_alone_batched_and_preempted(tiny_llama_dir):
    alone, logprobs = run_seeded(tiny_llama_dir, others=0)
    assert len(alone) >= 6 and len(set(alone)) > 1
    batched = run_seeded(tiny_llama_dir, others=3)[0]
    preempted = run_seeded(tiny_llama_dir, others=1, preempt_at=5)[0]
    assert len(batched) >= 4 and batched == alone[:len(batched)]
    assert len(preempted) >= 4 and preempted == alone[:len(preempted)]
    assert all(len(lp.token_ids) == 4 and lp.logprobs[0] <= 0 and lp.rank >= 1 for lp in logprobs)
