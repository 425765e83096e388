"""The tiny demo model (random weights, a local tokenizer), made once per machine."""
from __future__ import annotations

import os
from pathlib import Path

from qinfer.testing.tiny_model import make_tiny_model


def make_demo_model() -> Path:
    path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qinfer" / "tiny-llama"
    if not (path / "config.json").exists():
        make_tiny_model(path, "llama", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                        intermediate_size=128)
    return path
