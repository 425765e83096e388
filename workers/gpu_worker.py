"""Container entry point of a GPU worker: `python workers/gpu_worker.py --model DIR [...]`.

Flags and QINFER_* variables as for `qinfer worker`; the logic lives in qinfer/worker/.
"""
import sys

from qinfer.worker.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
