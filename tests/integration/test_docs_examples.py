"""Every ```python and ```bash block of README.md and docs/*.md runs, verbatim, against a fleet
this module starts (QINFER_REDIS_URL set, one worker serving the tiny llama as "tiny-llama").

The convention (docs/internals.md "Tests"):
- A block that cannot run here is marked by an HTML comment on the line before its fence,
  `<!-- skip: REASON -->` (e.g. `needs a GPU`, `needs a Docker engine`); it is listed, with
  its reason, in this test's output.
- `path/to/<anything>` in a block stands for a model directory: the tiny llama's.
- A page's python blocks run in order in one interpreter (later blocks see earlier names);
  each bash block runs alone under `bash -eo pipefail`, in a fresh directory, after them.
- Other fences (no language, text, json, yaml, ...) are not run.
New pages under docs/ are picked up by themselves, except those in OWN_RUNNER.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from qinfer.fleet import Fleet
from tests.fixtures_redis import TEST_ENV

REPO = Path(__file__).resolve().parents[2]
# Pages whose examples need more than a fleet, run by a test of their own.
OWN_RUNNER = {"docs/gateway.md": "tests/integration/test_gateway_docs.py starts the gateway they call"}
DOCS = [page for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
        if page.relative_to(REPO).as_posix() not in OWN_RUNNER]
RUNNABLE = ("python", "bash")
FENCE = re.compile(r"^```(\S*)\s*$")
SKIP = re.compile(r"^<!--\s*skip:\s*(\S.*?)\s*-->$")
MODEL_PATH = re.compile(r"path/to/[\w.\-/]+")

RUNNER = """
import json, sys, traceback
namespace = {"__name__": "__main__"}
for line, code in json.load(open(sys.argv[1])):
    try:
        exec(compile(code, f"{sys.argv[2]}:{line}", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"the example at {sys.argv[2]}:{line} failed")
"""


@dataclass
class Block:
    doc: str
    line: int             # of the opening fence
    lang: str
    code: str
    skip: Optional[str]   # the marker's reason


def read_blocks(path: Path) -> list[Block]:
    lines, blocks, previous, i = path.read_text().splitlines(), [], "", 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            end = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("```"))
            marker = SKIP.match(previous)
            name = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name
            blocks.append(Block(name, i + 1, fence.group(1),
                                "\n".join(lines[i + 1:end]), marker.group(1) if marker else None))
            i, previous = end + 1, ""
            continue
        if lines[i].strip():
            previous = lines[i].strip()
        i += 1
    return blocks


@pytest.fixture(scope="module")
def fleet_url(redis_server, tiny_llama_dir):
    fleet = Fleet(tiny_llama_dir, redis_server.url, 1, env=TEST_ENV,
                  worker_args=("--served-model-name", "tiny-llama", "--num-kv-blocks", "256"))
    fleet.start().wait_ready()
    yield redis_server.url
    fleet.stop(timeout=30)


def run_env(url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QINFER_")}
    bin_dir = str(Path(sys.executable).parent)       # `qinfer`, `python` of this environment
    return {**env, "QINFER_REDIS_URL": url, "PATH": f"{bin_dir}:{env.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_doc_examples_run(doc, fleet_url, tiny_llama_dir, tmp_path):
    blocks = [b for b in read_blocks(doc) if b.lang in RUNNABLE]
    for b in blocks:
        if b.skip:
            print(f"{b.doc}:{b.line} ({b.lang}) not run: {b.skip}")
    runnable = [b for b in blocks if not b.skip]
    if not runnable:
        pytest.skip(f"{doc.name} has no runnable example")
    env = run_env(fleet_url)
    substitute = lambda code: MODEL_PATH.sub(str(tiny_llama_dir), code)    # noqa: E731
    python = [(b.line, substitute(b.code)) for b in runnable if b.lang == "python"]
    if python:
        (tmp_path / "blocks.json").write_text(json.dumps(python))
        run(doc, [sys.executable, "-c", RUNNER, str(tmp_path / "blocks.json"), doc.name], tmp_path, env)
    for b in (b for b in runnable if b.lang == "bash"):
        cwd = tmp_path / f"bash-{b.line}"
        cwd.mkdir()
        run(doc, ["bash", "-eo", "pipefail", "-c", substitute(b.code)], cwd, env, f"{b.doc}:{b.line}")


def run(doc: Path, argv: list[str], cwd: Path, env: dict, where: str = "") -> None:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    print(result.stdout)
    assert result.returncode == 0, f"{where or doc.name}: exit code {result.returncode}\n{result.stderr[-4000:]}"


def test_skip_markers_sit_right_before_a_runnable_block():
    """A marker anywhere else would skip nothing, or the wrong block."""
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for number, line in enumerate(lines):
            if SKIP.match(line.strip()):
                following = next((nxt for nxt in lines[number + 1:] if nxt.strip()), "")
                fence = FENCE.match(following)
                assert fence and fence.group(1) in RUNNABLE, f"{doc.name}:{number + 1}: marker before no runnable block"


def test_blocks_are_read_with_their_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- skip: needs a GPU -->\n```python\nimport torch\n```\n\n```bash\necho hi\n```\n"
                    "```\nnot run\n```\n")
    blocks = [(b.line, b.lang, b.code, b.skip) for b in read_blocks(page)]
    assert blocks == [(4, "python", "import torch", "needs a GPU"), (8, "bash", "echo hi", None),
                      (11, "", "not run", None)]
