"""The Dockerfile installs extras that pyproject.toml defines, and copies what the build needs."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_install_step_matches_pyproject():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [extras] = re.findall(r'pip install "\.\[([a-z,]+)\]"', dockerfile)
    assert set(extras.split(",")) <= set(pyproject["project"]["optional-dependencies"])
    assert {"engine", "gpu"} <= set(extras.split(","))
    for path in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
    assert "workers/gpu_worker.py" in dockerfile and (ROOT / "workers" / "gpu_worker.py").exists()
