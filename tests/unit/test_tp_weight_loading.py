"""Tensor-parallel weight loading, one rank at a time and no process group (loading has no collective):
each rank reads from the checkpoint only what it keeps, and its shards are the right slices of it."""
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from qinfer.distributed.parallel_state import set_tp_group
from qinfer.executor import weight_loader
from qinfer.executor.model_runner import load_model

NUM_HEADS, HEAD_SIZE, HIDDEN, INTERMEDIATE = 4, 16, 64, 128


@pytest.fixture
def read_numel(monkeypatch):
    """Counts the checkpoint elements read through CheckpointTensor."""
    counter = {"numel": 0}
    original = weight_loader.CheckpointTensor.__getitem__

    def counting(self, index):
        tensor = original(self, index)
        counter["numel"] += tensor.numel()
        return tensor

    monkeypatch.setattr(weight_loader.CheckpointTensor, "__getitem__", counting)
    return counter


def load_rank(model_dir, rank: int, tp_size: int):
    set_tp_group(rank, tp_size)
    try:
        return load_model(str(model_dir), AutoConfig.from_pretrained(model_dir), torch.float32, torch.device("cpu"))
    finally:
        set_tp_group(0, 1)


@pytest.mark.parametrize("num_kv_heads,tp_size", [(2, 2), (2, 4), (1, 2)])
def test_ranks_read_only_their_shards_and_pair_q_heads_with_their_kv_heads(make_model_dir, read_numel,
                                                                           num_kv_heads, tp_size):
    model_dir = make_model_dir("llama", num_layers=1, hidden_size=HIDDEN, num_heads=NUM_HEADS,
                               num_kv_heads=num_kv_heads, intermediate_size=INTERMEDIATE, vocab_size=509)
    ckpt = load_file(model_dir / "model.safetensors")
    ckpt_numel = sum(t.numel() for t in ckpt.values())
    ranks = []
    for rank in range(tp_size):
        read_numel["numel"] = 0
        model = load_rank(model_dir, rank, tp_size)
        kept = sum(p.numel() for p in model.parameters())
        assert read_numel["numel"] <= kept < ckpt_numel * 0.7     # nothing read that the rank drops
        ranks.append(model)
    check_attention(ranks, ckpt, num_kv_heads)
    check_mlp_and_vocab(ranks, ckpt)


def check_attention(ranks, ckpt, num_kv_heads):
    prefix = "model.layers.0.self_attn."
    q_parts, o_parts = [], []
    for rank, model in enumerate(ranks):
        attn = model.model.layers[0].self_attn
        q, k, v = attn.qkv_proj.weight.split([attn.q_size, attn.kv_size, attn.kv_size])
        q_parts.append(q)
        o_parts.append(attn.o_proj.weight)
        for j in range(attn.num_heads):               # q head j of this rank reads kv head j // group
            global_kv = (rank * attn.num_heads + j) // (NUM_HEADS // num_kv_heads)
            local_kv = j // (attn.num_heads // attn.num_kv_heads)
            for local, name in ((k, "k_proj"), (v, "v_proj")):
                expected = ckpt[prefix + name + ".weight"].view(num_kv_heads, HEAD_SIZE, HIDDEN)[global_kv]
                assert torch.equal(local.view(-1, HEAD_SIZE, HIDDEN)[local_kv], expected)
    assert torch.equal(torch.cat(q_parts), ckpt[prefix + "q_proj.weight"])
    assert torch.equal(torch.cat(o_parts, dim=1), ckpt[prefix + "o_proj.weight"])


def check_mlp_and_vocab(ranks, ckpt):
    mlp = [model.model.layers[0].mlp for model in ranks]
    gates = [m.gate_up_proj.weight[:INTERMEDIATE // len(ranks)] for m in mlp]
    ups = [m.gate_up_proj.weight[INTERMEDIATE // len(ranks):] for m in mlp]
    assert torch.equal(torch.cat(gates), ckpt["model.layers.0.mlp.gate_proj.weight"])
    assert torch.equal(torch.cat(ups), ckpt["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(torch.cat([m.down_proj.weight for m in mlp], dim=1), ckpt["model.layers.0.mlp.down_proj.weight"])
    for name, module in (("model.embed_tokens.weight", "model.embed_tokens"), ("lm_head.weight", "lm_head")):
        full = torch.cat([model.get_submodule(module).weight for model in ranks])
        vocab = ckpt[name].shape[0]
        assert torch.equal(full[:vocab], ckpt[name]) and not full[vocab:].any()   # pad rows are zero


@pytest.mark.parametrize("arch,tp_size", [("mixtral", 2), ("qwen3_moe", 4)])
def test_ranks_hold_their_slice_of_every_expert(make_model_dir, read_numel, arch, tp_size):
    num_experts, inter = 4, 64
    model_dir = make_model_dir(arch, num_layers=1, hidden_size=HIDDEN, num_heads=NUM_HEADS, num_kv_heads=2,
                               intermediate_size=inter, moe_intermediate_size=inter, num_experts=num_experts)
    ckpt = load_file(model_dir / "model.safetensors")
    block = "block_sparse_moe" if arch == "mixtral" else "mlp"
    gate, up, down = ("w1", "w3", "w2") if arch == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    expert_numel = sum(t.numel() for name, t in ckpt.items() if ".experts." in name)
    ranks = []
    for rank in range(tp_size):
        read_numel["numel"] = 0
        model = load_rank(model_dir, rank, tp_size)
        assert read_numel["numel"] <= sum(p.numel() for p in model.parameters())   # nothing read it drops
        ranks.append(model.model.layers[0].mlp)
    assert sum(m.experts.w13_weight.numel() + m.experts.w2_weight.numel() for m in ranks) == expert_numel
    share = inter // tp_size
    for e in range(num_experts):
        prefix = f"model.layers.0.{block}.experts.{e}."
        w13 = [m.experts.w13_weight[e] for m in ranks]
        assert torch.equal(torch.cat([w[:share] for w in w13]), ckpt[prefix + gate + ".weight"])
        assert torch.equal(torch.cat([w[share:] for w in w13]), ckpt[prefix + up + ".weight"])
        assert torch.equal(torch.cat([m.experts.w2_weight[e] for m in ranks], dim=1), ckpt[prefix + down + ".weight"])
    for m in ranks:                                   # the router is replicated
        assert torch.equal(m.gate.weight, ckpt[f"model.layers.0.{block}.gate.weight"])


def test_a_checkpoint_missing_one_expert_tensor_is_refused(make_model_dir, tmp_path):
    from safetensors.torch import save_file

    model_dir = make_model_dir("mixtral", num_layers=1, hidden_size=HIDDEN, num_heads=NUM_HEADS, num_kv_heads=2,
                               intermediate_size=64, num_experts=4)
    broken = tmp_path / "broken"
    broken.mkdir()
    ckpt = load_file(model_dir / "model.safetensors")
    del ckpt["model.layers.0.block_sparse_moe.experts.3.w3.weight"]
    save_file(ckpt, broken / "model.safetensors")
    with pytest.raises(KeyError, match="experts.w13_weight"):
        weight_loader.load_weights(load_rank(model_dir, 0, 1), broken)


def split_fused(ckpt, num_kv_heads):
    """Phi-3's fused qkv_proj / gate_up_proj as the separate tensors the checks above read."""
    split = dict(ckpt)
    attn, mlp = "model.layers.0.self_attn.", "model.layers.0.mlp."
    q, k, v = split.pop(attn + "qkv_proj.weight").split([NUM_HEADS * HEAD_SIZE] + [num_kv_heads * HEAD_SIZE] * 2)
    gate, up = split.pop(mlp + "gate_up_proj.weight").chunk(2)
    split.update({attn + "q_proj.weight": q, attn + "k_proj.weight": k, attn + "v_proj.weight": v,
                  mlp + "gate_proj.weight": gate, mlp + "up_proj.weight": up})
    return split


@pytest.mark.parametrize("num_kv_heads,tp_size", [(1, 1), (2, 2), (1, 2)])
def test_fused_phi3_checkpoint_loads_its_parts_into_each_rank(make_model_dir, read_numel, num_kv_heads, tp_size):
    """qkv_proj and gate_up_proj stored fused: cut into q, k, v / gate, up, each rank its slices."""
    model_dir = make_model_dir("phi3", num_layers=1, hidden_size=HIDDEN, num_heads=NUM_HEADS,
                               num_kv_heads=num_kv_heads, intermediate_size=INTERMEDIATE, vocab_size=509)
    ckpt = load_file(model_dir / "model.safetensors")
    assert "model.layers.0.self_attn.qkv_proj.weight" in ckpt
    ranks = []
    for rank in range(tp_size):
        read_numel["numel"] = 0
        model = load_rank(model_dir, rank, tp_size)
        assert read_numel["numel"] <= sum(p.numel() for p in model.parameters())
        ranks.append(model)
    ckpt = split_fused(ckpt, num_kv_heads)
    check_attention(ranks, ckpt, num_kv_heads)
    check_mlp_and_vocab(ranks, ckpt)
