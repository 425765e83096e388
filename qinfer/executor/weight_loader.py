"""Stream checkpoint tensors one at a time from *.safetensors into a model's parameters.

Each tensor is handed, not yet read, to its parameter's `weight_loader`, which
indexes out the part its parameter holds (a fused slot, this tensor-parallel
rank's rows or columns); only that part is read from the file (safetensors
get_slice), so no rank ever holds the full model and there is never a second
full copy of the weights. Checkpoint names of fused projections are mapped
through the model's `packed_modules_mapping` (name part -> (fused part, shard id), or
(new part, None): a rename); the per-expert tensors of a mixture of experts
(`...experts.N.PROJ.weight`) through its `expert_params_mapping` (PROJ -> (stacked
parameter of `experts`, shard id)), whose loaders also get the expert index N.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from torch import nn

from qinfer.layers.linear import default_weight_loader

_SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)  # recomputed by the rotary layer
_EXPERT_TENSOR = re.compile(r"\.experts\.(\d+)\.(\w+)\.weight$")


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """The checkpoint's files: those listed by model.safetensors.index.json, else every *.safetensors."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return [model_dir / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    return files


class CheckpointTensor:
    """A checkpoint tensor not read yet. Indexing it (`t[:]`, `t[a:b]`, `t[:, a:b]`, like a
    torch.Tensor) reads just that part from the file, converted to `dtype`."""

    def __init__(self, tensor_slice, dtype: torch.dtype):
        self._slice, self.dtype = tensor_slice, dtype
        self.shape = torch.Size(tensor_slice.get_shape())

    def __getitem__(self, index) -> torch.Tensor:
        return self._slice[index].to(self.dtype)


def iter_checkpoint(model_dir: str | Path) -> Iterator[tuple[str, object]]:
    """(name, safetensors slice) for every tensor of the checkpoint, one at a time, unread."""
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_slice(name)


def _target(name: str, packed: dict[str, tuple[str, object]],
            experts: dict[str, tuple[str, object]]) -> tuple[str, tuple]:
    """Checkpoint name -> (parameter name, extra weight_loader arguments)."""
    args: tuple = ()
    expert = _EXPERT_TENSOR.search(name)
    if expert and expert.group(2) in experts:
        param, shard_id = experts[expert.group(2)]
        name, args = f"{name[:expert.start()]}.experts.{param}", (int(expert.group(1)), shard_id)
    for ckpt_part, (fused_part, shard_id) in packed.items():
        if f".{ckpt_part}." in name:
            name = name.replace(f".{ckpt_part}.", f".{fused_part}.")
            return name, args if shard_id is None else args + (shard_id,)
    return name, args


def load_weights(model: nn.Module, model_dir: str | Path) -> None:
    """Fill every parameter of `model` from the checkpoint; error on unknown or missing ones."""
    # remove_duplicate=False: a tied lm_head.weight is listed too (the embedding's tensor).
    params = dict(model.named_parameters(remove_duplicate=False))
    packed = getattr(model, "packed_modules_mapping", {})
    experts = getattr(model, "expert_params_mapping", {})
    num_loads: Counter[int] = Counter()     # parameter id -> checkpoint tensors loaded into it
    with torch.no_grad():
        for name, tensor_slice in iter_checkpoint(model_dir):
            if name.endswith(_SKIPPED_SUFFIXES):
                continue
            param_name, args = _target(name, packed, experts)
            if param_name not in params:
                raise KeyError(f"checkpoint tensor {name!r} has no parameter in {type(model).__name__}")
            param = params[param_name]
            loader = getattr(param, "weight_loader", default_weight_loader)
            loader(param, CheckpointTensor(tensor_slice, param.dtype), *args)
            num_loads[id(param)] += 1
    # A stacked parameter (the experts of a layer) says how many checkpoint tensors fill it.
    missing = sorted(name for name, param in params.items()
                     if num_loads[id(param)] < getattr(param, "num_checkpoint_tensors", 1))
    if missing:
        raise KeyError(f"parameters missing from checkpoint {model_dir}: {missing}")
