"""Reading vLLM-shaped logprobs in tests, as code written against vLLM reads them."""


def sampled_logprobs(completion) -> list[float]:
    """The logprob of each generated token: out.outputs[i].logprobs[j][token_ids[j]].logprob."""
    return [position[token_id].logprob for token_id, position in zip(completion.token_ids, completion.logprobs)]
