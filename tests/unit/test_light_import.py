"""`import qinfer` and the client stay light: producers build and submit requests, and catch
every exception qinfer raises (importable from `qinfer` itself), without torch, triton,
transformers, or the callbacks worker's Celery."""
import subprocess
import sys

CHECK = """
import sys
import qinfer
import qinfer.client
from qinfer import (CallbackURLRefused, EngineConfigError, IdempotencyConflictError, InvalidRequestError,
                    JobNotFoundError, JobTimeoutError, MissingExtraError, NoRedisError, QinferError,
                    QueueFullError, ValidationError, WebhookVerificationError)
import qinfer.errors, qinfer.ssrf, pydantic
assert JobNotFoundError is qinfer.errors.JobNotFoundError and CallbackURLRefused is qinfer.ssrf.CallbackURLRefused
assert ValidationError is pydantic.ValidationError
from qinfer.config import Settings
from qinfer.queue.producer import as_request
qinfer.SamplingParams(temperature=0.5, stop=["x"])
as_request({"model": "m", "prompt": "x", "callback_url": "https://hooks.example/x"}, Settings())
heavy = sorted(m for m in ("torch", "triton", "transformers", "celery", "kombu", "prometheus_client")
               if m in sys.modules)
print(",".join(heavy))
"""


def test_import_qinfer_and_submit_path_leave_heavy_modules_out():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


GATEWAY_CHECK = """
import sys
import qinfer.gateway.app
import qinfer.gateway.commands
heavy = sorted(m for m in ("torch", "triton", "transformers", "celery") if m in sys.modules)
print(",".join(heavy))
"""


def test_gateway_stays_light():
    """The gateway needs neither the engine nor Celery: it runs on the light install + `gateway`."""
    result = subprocess.run([sys.executable, "-c", GATEWAY_CHECK], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
