"""Launch entry of the webhook callbacks worker (logic in qinfer/callbacks/worker.py).

Configured by QINFER_* environment variables; `qinfer callbacks-worker` is the same with flags.
"""
from qinfer.callbacks.worker import run_callbacks_worker

if __name__ == "__main__":
    run_callbacks_worker()
