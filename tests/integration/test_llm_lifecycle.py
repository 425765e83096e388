"""In-process engines: LLM.close() and `with LLM(...)`, and tensor-parallel LLMs made one after the
other in one process (gloo ranks on the CPU), closed or not."""
import multiprocessing

import pytest

from qinfer import LLM, SamplingParams
from tests.integration.test_tensor_parallel import ENGINE, model_dir_of

PROMPTS = ["The quick brown fox", "A small robot paints the quiet harbour"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def token_ids(llm: LLM) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]


def test_tensor_parallel_llms_one_after_the_other_in_one_process(make_model_dir):
    model_dir = str(model_dir_of(make_model_dir, "llama-gqa2"))
    with LLM(model_dir, **ENGINE) as single:          # the oracle: one rank (equal to transformers elsewhere)
        expected = token_ids(single)
    with LLM(model_dir, tensor_parallel_size=2, **ENGINE) as first:
        assert token_ids(first) == expected
    assert not multiprocessing.active_children()      # its rank stopped on leaving the block
    with pytest.raises(RuntimeError, match="this LLM is closed"):
        first.generate(PROMPTS, GREEDY, use_tqdm=False)

    second = LLM(model_dir, tensor_parallel_size=2, **ENGINE)   # failed before: "default process group twice"
    assert token_ids(second) == expected
    third = LLM(model_dir, tensor_parallel_size=2, **ENGINE)    # `second` never closed: it is replaced
    assert token_ids(third) == expected
    with pytest.raises(RuntimeError, match="replaced it: one TP group per process"):
        second.generate(PROMPTS, GREEDY, use_tqdm=False)
    third.close()
    third.close()                                     # idempotent
    second.close()
    assert not multiprocessing.active_children()
