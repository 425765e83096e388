"""The mistakes of a first hour get one line on stderr that says what to do, never a traceback
(`--debug` shows it); `LLM(...)` raises the same errors, before anything loads."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import qinfer
from qinfer.cli import main
from qinfer.embedded_redis import free_port

DEAD_REDIS = f"redis://127.0.0.1:{free_port()}/0"      # nothing listens there


@pytest.fixture
def no_redis_env(monkeypatch):
    monkeypatch.delenv("QINFER_REDIS_URL", raising=False)
    from qinfer.config import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def bare_dir(tmp_path):
    (tmp_path / "bare").mkdir()
    return str(tmp_path / "bare")


def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("qinfer: error: ")
    return err


@pytest.mark.parametrize("argv, says", [
    (["submit", "--model", "m", "hi"], "pass --redis URL or set QINFER_REDIS_URL"),
    (["status", "0" * 32], "pass --redis URL or set QINFER_REDIS_URL"),
    (["worker", "--model", "m"], "pass --redis URL or set QINFER_REDIS_URL"),
])
def test_no_redis_url(capsys, no_redis_env, argv, says):
    assert says in one_line_error(capsys, argv)


@pytest.mark.parametrize("argv", [["status", "abc"], ["queues"], ["workers"], ["submit", "--model", "m", "x"]])
def test_redis_unreachable(capsys, argv):
    err = one_line_error(capsys, ["--redis", DEAD_REDIS, *argv])
    assert "cannot reach Redis" in err and "--redis / QINFER_REDIS_URL" in err


def test_unknown_job_id(capsys, redis_url):
    for command in ("status", "wait", "cancel"):
        assert "no job 'feedc0de'" in one_line_error(capsys, ["--redis", redis_url, command, "feedc0de"])


@pytest.mark.parametrize("flags, says", [
    (["--sampling", '{"temperature": -1}'], "sampling.temperature: Input should be greater than or equal to 0"),
    (["--sampling", "{temperature: 0}"], "--sampling is not valid JSON"),
    (["--sampling", "[1]"], "--sampling must be a JSON object"),
    (["--temperature", "-2"], "sampling.temperature"),
    (["--n", "0"], "sampling.n"),
    (["--metadata", "nope"], "--metadata is not valid JSON"),
    (["--messages", '{"role": "user"}'], "--messages must be a JSON list"),
    (["--messages", "@/nonexistent/chat.json"], "No such file or directory"),
    (["--priority", "-1"], "priority: Input should be greater than or equal to 0"),
    (["--priority", "10"], "priority 10 is above the maximum 9"),
])
def test_bad_submit_values_write_nothing(capsys, redis_url, flags, says):
    import redis

    argv = ["--redis", redis_url, "submit", "--model", "m", *([] if "--messages" in flags else ["hi"]), *flags]
    assert says in one_line_error(capsys, argv)
    assert redis.Redis.from_url(redis_url).dbsize() == 0


@pytest.mark.parametrize("model, flags, says", [
    ("{missing}", [], "model directory '{missing}' does not exist"),
    ("{bare}", [], "is not a Hugging Face model directory: it has no config.json"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", [], "qinfer downloads nothing"),
    ("{tiny}", ["--device", "gpu"], "unknown device 'gpu': use cpu, cuda or cuda:N"),
    ("{tiny}", ["--dtype", "fp8"], "unknown dtype 'fp8'"),
])
def test_worker_bad_model_device_dtype(capsys, redis_url, tiny_llama_dir, bare_dir, tmp_path, model, flags, says):
    paths = {"missing": str(tmp_path / "missing"), "bare": bare_dir, "tiny": str(tiny_llama_dir)}
    argv = ["worker", "--redis", redis_url, "--model", model.format(**paths), *flags]
    assert says.format(**paths) in one_line_error(capsys, argv)


def test_cuda_without_cuda(capsys, redis_url, tiny_llama_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    err = one_line_error(capsys, ["worker", "--redis", redis_url, "--model", str(tiny_llama_dir), "--device", "cuda"])
    assert "torch sees no CUDA device" in err and "use device cpu" in err


def test_hub_id_fails_at_once_without_network(tmp_path):
    """No HTTP retries: the check runs before transformers, even with the hub reachable or not."""
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "qinfer.cli", "worker", "--redis", DEAD_REDIS,
                             "--model", "HuggingFaceTB/SmolLM2-135M-Instruct"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1 and "downloads nothing" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("argv", [["--debug", "--redis", DEAD_REDIS, "status", "x"],
                                  ["status", "x", "--redis", DEAD_REDIS, "--debug"]])
def test_debug_shows_the_traceback(argv):
    result = subprocess.run([sys.executable, "-m", "qinfer.cli", *argv], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" in result.stderr and "ConnectionError" in result.stderr


def test_common_flags_after_the_subcommand(capsys):
    """--log-level (documented with the worker's flags), --redis and --debug go before or after it."""
    err = one_line_error(capsys, ["status", "x", "--log-level", "DEBUG", "--redis", DEAD_REDIS])
    assert "cannot reach Redis" in err


# Modules of the engine extra blocked: what a `pip install qinfer` (no extras) machine has.
LIGHT = "import sys\nfor m in ('torch', 'transformers', 'prometheus_client', 'numpy'): sys.modules[m] = None\n"


@pytest.mark.parametrize("entry", ["from qinfer.cli import main; sys.exit(main(['worker', '--model', M]))",
                                   "from qinfer.worker.__main__ import main; sys.exit(main(['--model', M]))"])
def test_worker_on_the_light_install_names_the_extra(tiny_llama_dir, redis_url, entry):
    code = LIGHT + f"M = {str(tiny_llama_dir)!r}\n" + entry
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "QINFER_REDIS_URL": redis_url})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "pip install 'qinfer[engine]'" in result.stderr


def test_llm_on_the_light_install_names_the_extra(tiny_llama_dir):
    code = LIGHT + f"import qinfer\nqinfer.LLM({str(tiny_llama_dir)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "qinfer.errors.MissingExtraError" in result.stderr and "pip install 'qinfer[engine]'" in result.stderr


@pytest.mark.parametrize("kwargs, says", [
    ({"model": "{missing}"}, "does not exist"),
    ({"model": "{bare}"}, "no config.json"),
    ({"model": "meta-llama/Llama-3.2-1B"}, "qinfer downloads nothing"),
    ({"device": "gpu"}, "unknown device 'gpu'"),
    ({"device": "cuda:x"}, "unknown device 'cuda:x'"),
    ({"dtype": "half-ish"}, "unknown dtype 'half-ish'"),
])
def test_llm_raises_the_same_errors(tiny_llama_dir, bare_dir, tmp_path, kwargs, says):
    paths = {"missing": str(tmp_path / "missing"), "bare": bare_dir}
    kwargs = {"model": str(tiny_llama_dir), **kwargs}
    kwargs["model"] = kwargs["model"].format(**paths)
    with pytest.raises(qinfer.EngineConfigError, match=says) as info:
        qinfer.LLM(**kwargs)
    assert isinstance(info.value, ValueError)        # an EngineConfigError is a ValueError
