"""Decode steps replayed from CUDA graphs give the same tokens as eager steps."""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_decode_buckets():
    from qinfer.executor.cuda_graphs import decode_buckets
    assert decode_buckets(1) == [1]
    assert decode_buckets(40) == [1, 2, 4, 8, 16, 32, 40]


def test_graph_replay_matches_eager(tmp_path):
    # float32: eager and bucketed batches may pick other matmul kernels; bf16 rounding
    # differences could flip a greedy choice without any bug.
    from qinfer.llm import LLM
    from qinfer.sampling_params import SamplingParams
    from qinfer.testing.tiny_model import make_tiny_model

    model_dir = make_tiny_model(tmp_path / "tiny", "llama", num_layers=2)
    # 3 and 5 requests: replays of buckets 4 and 8 with padded rows; prompts of uneven lengths.
    prompts = [[5 + i, 9, 17 + 3 * i, 4][: 2 + i % 3] for i in range(5)]
    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    tokens = {}
    for eager in (True, False):
        llm = LLM(str(model_dir), device="cuda", dtype="float32", max_num_seqs=8, enforce_eager=eager)
        assert (llm.engine.executor.runner.cuda_graphs is None) == eager
        tokens[eager] = [[o.outputs[0].token_ids for o in llm.generate(prompts[:n], greedy, use_tqdm=False)]
                         for n in (3, 5)]
        del llm
    assert tokens[True] == tokens[False]
