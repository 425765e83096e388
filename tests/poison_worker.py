"""A worker whose engine crashes on poison jobs, for the dead-letter tests:

    python -m tests.poison_worker --poison-marker MARKER [--admission-poison-marker MARKER2] <qinfer worker flags>

Every engine step raises while a request whose prompt contains MARKER is in the
engine (added and not aborted), like an engine bug that one input triggers
each time; add_request raises TypeError for a prompt containing MARKER2 (seen:
the tokenizer on a lone surrogate). Everything else is the normal worker entry point.
"""
from __future__ import annotations

import argparse
import sys

from qinfer.cli import main
from qinfer.engine.llm_engine import LLMEngine


def poison_engine(marker: str, admission_marker: str | None = None) -> None:
    """Patch LLMEngine so that its steps fail while a poison request is in it."""
    poisoned: set[str] = set()
    add_request, abort_request, step = LLMEngine.add_request, LLMEngine.abort_request, LLMEngine.step

    def add(self, request_id, prompt=None, *args, **kwargs):
        if admission_marker and admission_marker in (prompt or ""):
            raise TypeError(f"poison at admission: prompt contains {admission_marker!r}")
        add_request(self, request_id, prompt, *args, **kwargs)
        if marker in (prompt or ""):
            poisoned.add(request_id)

    def abort(self, request_id):
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        abort_request(self, ids)
        poisoned.difference_update(ids)   # handed back: the next step only reports the abort

    def poisoned_step(self):
        if poisoned:
            raise RuntimeError(f"poison job: prompt contains {marker!r}")
        return step(self)

    LLMEngine.add_request, LLMEngine.abort_request, LLMEngine.step = add, abort, poisoned_step


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--poison-marker", required=True)
    ap.add_argument("--admission-poison-marker")
    args, worker_flags = ap.parse_known_args()
    poison_engine(args.poison_marker, args.admission_poison_marker)
    sys.exit(main(["worker", *worker_flags]))
