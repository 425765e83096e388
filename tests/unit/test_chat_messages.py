"""Chat jobs: `messages` validated in JobRequest, rendered by the worker with the model's chat
template, or with the documented ChatML fallback when the tokenizer has none."""
import shutil

import pytest
from pydantic import ValidationError
from transformers import AutoTokenizer

from qinfer.engine.llm_engine import LLMEngine
from qinfer.schema import JobRequest
from qinfer.worker.jobs import FALLBACK_CHAT_TEMPLATE, JobRejected, render_chat

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def untemplated_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny model with its chat template removed (both places transformers keeps one)."""
    path = tmp_path_factory.mktemp("untemplated") / "model"
    shutil.copytree(tiny_llama_dir, path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    config = (path / "tokenizer_config.json").read_text()
    assert "chat_template" not in config or '"chat_template": null' in config
    return path


def _job(messages) -> JobRequest:
    return JobRequest(model="tiny", messages=messages)


def test_messages_are_validated():
    with pytest.raises(ValidationError):
        _job([])
    with pytest.raises(ValidationError):
        _job([{"role": "", "content": "x"}])
    with pytest.raises(ValidationError):
        _job([{"content": "no role"}])


def test_worker_renders_with_the_models_template(tiny_llama_dir):
    engine = LLMEngine.from_kwargs(str(tiny_llama_dir), num_kv_blocks=16)
    oracle = AutoTokenizer.from_pretrained(tiny_llama_dir)
    expected = oracle.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert engine.has_chat_template and render_chat(engine, _job(CHAT)) == list(expected)


def test_worker_falls_back_to_chatml_when_the_tokenizer_has_none(untemplated_dir):
    engine = LLMEngine.from_kwargs(str(untemplated_dir), num_kv_blocks=16)
    assert not engine.has_chat_template
    text = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n"
            "<|im_start|>assistant\n")
    expected = AutoTokenizer.from_pretrained(untemplated_dir)(text, add_special_tokens=False).input_ids
    assert render_chat(engine, _job(CHAT)) == expected
    assert "<|im_start|>" in FALLBACK_CHAT_TEMPLATE


def test_a_template_that_cannot_render_rejects_the_job(tiny_llama_dir):
    engine = LLMEngine.from_kwargs(str(tiny_llama_dir), num_kv_blocks=16)
    engine.tokenizer.chat_template = "{{ raise_exception('only user turns') }}"
    with pytest.raises(JobRejected, match="cannot render messages"):
        render_chat(engine, _job(CHAT))
