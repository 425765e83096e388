"""Tiny random Llama / Qwen2 / Qwen3 / Mistral / Phi-3 / Mixtral / Qwen3-MoE model directories
for tests and benches.

    python -m qinfer.testing.tiny_model OUT_DIR --arch llama|qwen2|qwen3|mistral|phi3|mixtral|qwen3_moe
        [--num-layers 2 ...]

Writes config.json, *.safetensors (optionally sharded with an index json) and a
byte-level BPE tokenizer trained here on a built-in English corpus, so nothing
is downloaded. Weights are deterministic in `seed`; their std (0.1) is larger
than a real init so greedy continuations differ from prompt to prompt.
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WEIGHT_STD = 0.1

_SUBJECTS = ["The quick brown fox", "A small robot", "My old teacher", "The river", "Every engine",
             "The tired scheduler", "Our garden", "The red kettle", "A curious cat", "The night train"]
_VERBS = ["jumps over", "writes about", "waits for", "remembers", "carries", "paints",
          "follows", "listens to", "builds", "forgets"]
_OBJECTS = ["the lazy dog.", "a bright morning.", "the long queue of jobs.", "seven green apples.",
            "the quiet harbour.", "an empty page.", "the last token.", "a warm cup of tea.",
            "the mountain road.", "every small number 0 1 2 3 4 5 6 7 8 9."]
_PARAGRAPH = (
    "Once upon a time, in a city of glass and rain, people wrote letters to machines. "
    "The machines read every word, thought for a while, and answered with stories, numbers, "
    "recipes and questions of their own. Hello, world! How are you today? I am fine, thank you."
)


def corpus() -> list[str]:
    """A few thousand short English sentences, deterministic."""
    rng = random.Random(0)
    lines = [f"{s} {v} {o}" for s, v, o in itertools.product(_SUBJECTS, _VERBS, _OBJECTS)]
    rng.shuffle(lines)
    return lines + [_PARAGRAPH] * 20


def train_tokenizer(vocab_size: int):
    """A byte-level BPE PreTrainedTokenizerFast with bos/eos/pad and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    # Like Llama's tokenizer: encode() prepends BOS (chat templates tokenize without special tokens).
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, tok.token_to_id(BOS))])
    # unk_token is set (to EOS; byte-level BPE never emits unk) because transformers 5 loads a
    # qwen2 directory as Qwen2Tokenizer, which otherwise adds a new "<|endoftext|>" unk token.
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=EOS, chat_template=CHAT_TEMPLATE)


ARCHS = ("llama", "qwen2", "qwen3", "mistral", "phi3", "mixtral", "qwen3_moe")


def rope_config(rope_scaling, rope_theta: float, head_dim: int, max_position_embeddings: int,
                original_max_position_embeddings=None) -> dict:
    """rope_parameters: default, llama3 or Phi-3's longrope (short and long factors per frequency:
    the long ones for a model longer than its original length); original length max/4 unless given."""
    if rope_scaling is None:
        return {"rope_type": "default", "rope_theta": rope_theta}
    original = original_max_position_embeddings or max_position_embeddings // 4
    if rope_scaling == "llama3":
        return {"rope_type": "llama3", "rope_theta": rope_theta, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": original}
    if rope_scaling == "longrope":
        num_freqs = head_dim // 2
        return {"rope_type": "longrope", "rope_theta": rope_theta, "original_max_position_embeddings": original,
                "short_factor": [1.0 + 0.25 * i for i in range(num_freqs)],
                "long_factor": [1.0 + 1.0 * i for i in range(num_freqs)]}
    raise ValueError(f"unknown rope_scaling {rope_scaling!r}: use 'llama3' or 'longrope'")


def build_config(arch: str, vocab_size: int, bos_id: int, eos_id: int, *, hidden_size=64,
                 num_layers=2, num_heads=4, num_kv_heads=2, head_dim=None, intermediate_size=128,
                 tie_word_embeddings=False, rope_scaling=None, max_position_embeddings=256,
                 rope_theta=10000.0, sliding_window=None, original_max_position_embeddings=None, num_experts=4,
                 num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True):
    from transformers import (LlamaConfig, MistralConfig, MixtralConfig, Phi3Config, Qwen2Config, Qwen3Config,
                              Qwen3MoeConfig)

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: use one of {', '.join(ARCHS)}")
    if sliding_window is not None and arch not in ("mistral", "phi3"):
        raise ValueError(f"sliding_window is for mistral and phi3, not {arch}")
    if rope_scaling == "longrope" and arch != "phi3":
        raise ValueError("longrope rope scaling is Phi-3's")
    derived_head_dim = hidden_size // num_heads
    if arch in ("qwen2", "phi3") and head_dim not in (None, derived_head_dim):
        raise ValueError(f"{arch} derives head_dim from hidden_size / num_heads")
    head_dim = head_dim or derived_head_dim
    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                  intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
                  tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_id, eos_token_id=eos_id,
                  rope_parameters=rope_config(rope_scaling, rope_theta, head_dim, max_position_embeddings,
                                              original_max_position_embeddings),
                  rms_norm_eps=1e-6)
    if arch == "llama":
        return LlamaConfig(head_dim=head_dim, **common)
    if arch == "qwen2":
        return Qwen2Config(use_sliding_window=False, **common)
    if arch == "qwen3":
        return Qwen3Config(head_dim=head_dim, use_sliding_window=False, **common)
    if arch == "mistral":
        return MistralConfig(head_dim=head_dim, sliding_window=sliding_window, **common)
    # Mixtral's experts are intermediate_size wide; Qwen3-MoE's moe_intermediate_size (its
    # intermediate_size is for dense layers, none here).
    if arch == "mixtral":
        return MixtralConfig(head_dim=head_dim, num_local_experts=num_experts,
                             num_experts_per_tok=num_experts_per_tok, **common)
    if arch == "qwen3_moe":
        return Qwen3MoeConfig(head_dim=head_dim, num_experts=num_experts, num_experts_per_tok=num_experts_per_tok,
                              norm_topk_prob=norm_topk_prob, moe_intermediate_size=moe_intermediate_size,
                              **common)
    original = common["rope_parameters"].get("original_max_position_embeddings", max_position_embeddings)
    return Phi3Config(sliding_window=sliding_window, original_max_position_embeddings=original,
                      pad_token_id=eos_id, **common)


def randomize_(model, seed: int) -> None:
    """Every weight ~ N(0, WEIGHT_STD) (biases too, so bias loading is tested); norms ~ 1 + N(0, 0.1)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * WEIGHT_STD
            param.copy_(1.0 + noise if "norm" in name else noise)


def save_model(model, out_dir: Path, shards: int) -> None:
    if shards <= 1:
        model.save_pretrained(out_dir)
        return
    num_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(out_dir, max_shard_size=num_bytes // shards + 1)


def make_tiny_model(out_dir, arch: str = "llama", *, vocab_size: int = 512, seed: int = 0,
                    shards: int = 1, **sizes) -> Path:
    """Build a tiny random model directory at out_dir; returns its path.

    sizes: hidden_size, num_layers, num_heads, num_kv_heads, head_dim, intermediate_size,
    tie_word_embeddings, rope_scaling ("llama3", "longrope" for phi3, or None),
    max_position_embeddings, original_max_position_embeddings (of rope_scaling; default max/4),
    rope_theta, sliding_window (mistral, phi3); mixtures of experts: num_experts,
    num_experts_per_tok, moe_intermediate_size and norm_topk_prob (qwen3_moe).
    The model's vocab size is the trained tokenizer's (at most vocab_size).
    """
    import torch
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size)
    config = build_config(arch, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, **sizes)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize_(model, seed)
    save_model(model, out_dir, shards)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--arch", choices=ARCHS, default="llama")
    for flag, default in [("hidden-size", 64), ("num-layers", 2), ("num-heads", 4), ("num-kv-heads", 2),
                          ("head-dim", None), ("intermediate-size", 128), ("vocab-size", 512),
                          ("max-position-embeddings", 256), ("seed", 0), ("shards", 1),
                          ("sliding-window", None), ("original-max-position-embeddings", None),
                          ("num-experts", 4), ("num-experts-per-tok", 2), ("moe-intermediate-size", 32)]:
        p.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--tie-word-embeddings", action="store_true")
    p.add_argument("--rope-scaling", choices=["llama3", "longrope"], default=None)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = vars(_parse_args(argv))
    out = make_tiny_model(args.pop("out_dir"), args.pop("arch"), **args)
    print(json.dumps({"model_dir": str(out)}))


if __name__ == "__main__":
    main()
