"""Steps replayed from CUDA graphs (decode-only and mixed prefill + decode) give the same tokens
as eager steps."""
from __future__ import annotations

import gc

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_buckets():
    from qinfer.executor.cuda_graphs import decode_buckets, mixed_buckets
    assert decode_buckets(1) == [1]
    assert decode_buckets(40) == [1, 2, 4, 8, 16, 32, 40]
    assert mixed_buckets(0) == []
    assert mixed_buckets(20) == [8, 16, 20]
    sizes = mixed_buckets(1000)
    assert sizes[:3] == [8, 16, 24] and 256 in sizes and 264 not in sizes and 272 in sizes
    assert sizes[-1] == 1000 and sizes == sorted(set(sizes))
    assert all(b - a <= max(8, a / 16) for a, b in zip(sizes, sizes[1:]))


def _generate(model_dir, enforce_eager: bool, async_scheduling: bool):
    """Tokens of staggered requests (uneven prompt and output lengths, more requests than
    max_num_seqs, prompts chunked): nearly every step mixes a prefill chunk with decodes.
    Greedy and seeded random requests. Returns (tokens, graph buckets replayed)."""
    from qinfer.llm import LLM
    from qinfer.sampling_params import SamplingParams

    llm = LLM(str(model_dir), device="cuda", dtype="float32", max_num_seqs=6, max_num_batched_tokens=48,
              num_kv_blocks=256, enforce_eager=enforce_eager, async_scheduling=async_scheduling)
    graphs = llm.engine.executor.runner.cuda_graphs
    assert (graphs is None) == enforce_eager
    replayed = []
    if graphs is not None:
        stage = graphs.stage
        graphs.stage = lambda *a: replayed.append(stage(*a)) or replayed[-1]
    prompts = [[5 + i, 9, 17 + 3 * i, 4, 60 + i] * (1 + i % 4) for i in range(14)]
    params = [SamplingParams(temperature=0.0 if i % 2 else 1.0, seed=i, max_tokens=6 + 5 * (i % 5),
                             ignore_eos=True) for i in range(14)]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    del llm, graphs   # free this engine's KV cache (the wrapper makes a cycle: gc) before the next one
    gc.collect()
    torch.cuda.empty_cache()
    return [o.outputs[0].token_ids for o in outputs], replayed


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_graph_replay_matches_eager(tmp_path, async_scheduling):
    # float32: eager and bucketed batches may pick other matmul kernels; bf16 rounding
    # differences could flip a greedy choice without any bug.
    from qinfer.testing.tiny_model import make_tiny_model

    model_dir = make_tiny_model(tmp_path / "tiny", "llama", num_layers=2)
    eager_tokens, _ = _generate(model_dir, enforce_eager=True, async_scheduling=async_scheduling)
    graph_tokens, replayed = _generate(model_dir, enforce_eager=False, async_scheduling=async_scheduling)
    assert graph_tokens == eager_tokens
    kinds = {kind for kind, _ in replayed}
    assert kinds == {"mixed", "decode"}
    assert any(size > 8 for kind, size in replayed if kind == "mixed")
