"""The tiny model factory: HF-loadable model + tokenizer, deterministic, fast."""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from qinfer.testing.tiny_model import make_tiny_model


def test_tiny_llama_loads_in_transformers(tiny_llama_dir):
    config = AutoConfig.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert config.architectures == ["LlamaForCausalLM"]
    assert config.vocab_size == len(tokenizer)
    assert config.rope_parameters["rope_type"] == "llama3" and not config.tie_word_embeddings
    assert config.num_key_value_heads < config.num_attention_heads
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir)


def test_tokenizer_roundtrip_and_special_tokens(tiny_qwen2_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    text = "Hello, world! The quick brown fox."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.eos_token_id is not None and 256 <= len(tokenizer) <= 512
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert "hi" in chat and chat.endswith("<|assistant|>\n")


def test_qwen2_is_tied_with_biases(tiny_qwen2_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0


def test_deterministic_in_seed(tmp_path):
    first = make_tiny_model(tmp_path / "a", "llama", seed=3)
    second = make_tiny_model(tmp_path / "b", "llama", seed=3)
    a, b = (AutoModelForCausalLM.from_pretrained(d).state_dict() for d in (first, second))
    assert all(torch.equal(a[name], b[name]) for name in a)
