""".ci/compose-check (`make compose-check`, part of `make test`) installs nothing system-wide
without saying so: without a compose client, root installs Debian's and says so; anyone else
skips with the reason. apt-get, id and docker-compose are stand-ins on a private PATH."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "compose-check"

# Validates like the real client: the callbacks service needs QINFER_WEBHOOK_SECRET.
FAKE_COMPOSE = '#!/bin/bash\n[ -n "${QINFER_WEBHOOK_SECRET:-}" ]\n'


def private_path(tmp_path: Path, uid: int) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "env", "cat", "chmod"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    write_tool(bin_dir / "id", f"#!/bin/bash\necho {uid}\n")
    # apt-get "installs" docker-compose into this PATH, and notes that it ran
    write_tool(bin_dir / "apt-get", f"#!/bin/bash\necho \"$@\" >> {tmp_path}/apt.log\n"
                                    f"cat > {bin_dir}/docker-compose <<'X'\n{FAKE_COMPOSE}X\n"
                                    f"chmod +x {bin_dir}/docker-compose\n")
    return bin_dir


def write_tool(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def run_check(bin_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "bash"), str(SCRIPT)], capture_output=True, text=True,
                          env={"PATH": str(bin_dir)})


def test_not_root_without_compose_skips_and_says_why(tmp_path):
    result = run_check(private_path(tmp_path, uid=1000))
    assert result.returncode == 0, result.stderr
    assert "compose-check: skipped: no docker-compose on PATH" in result.stdout
    assert not (tmp_path / "apt.log").exists()


def test_root_without_compose_says_what_it_installs_then_checks(tmp_path):
    result = run_check(private_path(tmp_path, uid=0))
    assert result.returncode == 0, result.stderr
    assert "installing Debian's docker-compose system-wide (apt-get install docker-compose)" in result.stdout
    assert "install -y -qq docker-compose" in (tmp_path / "apt.log").read_text()
    assert result.stdout.strip().endswith("compose.yaml: valid")


def test_a_compose_file_that_starts_without_the_secret_fails(tmp_path):
    bin_dir = private_path(tmp_path, uid=1000)
    write_tool(bin_dir / "docker-compose", "#!/bin/bash\nexit 0\n")       # accepts a missing secret
    result = run_check(bin_dir)
    assert result.returncode == 1 and "starts without QINFER_WEBHOOK_SECRET" in result.stderr
