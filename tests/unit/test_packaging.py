"""The Dockerfile installs extras that pyproject.toml defines, and copies what the build needs."""
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_install_step_matches_pyproject():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [extras] = re.findall(r'pip install "\.\[([a-z,]+)\]"', dockerfile)
    assert set(extras.split(",")) <= set(pyproject["project"]["optional-dependencies"])
    assert {"engine", "gpu", "callbacks"} <= set(extras.split(","))   # one image: GPU and callbacks workers
    for path in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
    assert "workers/gpu_worker.py" in dockerfile and (ROOT / "workers" / "gpu_worker.py").exists()


def test_image_runs_as_a_user_and_callbacks_extra_serves_metrics():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    callbacks = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["callbacks"]
    assert any(dep.startswith("prometheus-client") for dep in callbacks)


def test_compose_redis_persists_with_aof_into_a_volume():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    redis = compose["services"]["redis"]
    command = redis["command"]
    flags = dict(zip(command[1::2], command[2::2]))
    assert flags["--appendonly"] == "yes" and flags["--dir"] == "/data"
    assert flags["--appendfsync"] in ("${REDIS_APPENDFSYNC:-everysec}", "always", "everysec")
    volume, target = redis["volumes"][0].split(":")[:2]
    assert target == "/data" and volume in compose["volumes"]       # a named volume, not the container
