"""`qinfer serve` (run a gateway) and `qinfer batch submit|status|cancel|results` (the Batch
API through a gateway, over HTTP). Registered in qinfer/cli.py; flags named like Settings
fields override the QINFER_* environment."""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from qinfer.config import Settings, parse_api_keys

TERMINAL = ("completed", "failed", "expired", "cancelled")


# --- serve ----------------------------------------------------------------------------------
def serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", dest="gateway_host", help="bind address (default: QINFER_GATEWAY_HOST)")
    p.add_argument("--port", dest="gateway_port", type=int, help="port (default: QINFER_GATEWAY_PORT)")
    p.add_argument("--api-key", dest="serve_api_keys", action="append", metavar="NAME:KEY",
                   help="accept this bearer key (repeat for several; default: QINFER_API_KEYS)")
    p.add_argument("--files-dir", dest="files_dir", help="file store directory (default: QINFER_FILES_DIR)")


def serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from qinfer.gateway.app import create_app

    if not settings.redis_url:
        sys.exit("no Redis URL: pass --redis URL or set QINFER_REDIS_URL")
    if args.serve_api_keys:
        settings = settings.model_copy(update={"api_keys": parse_api_keys(",".join(args.serve_api_keys))})
    uvicorn.run(create_app(settings), host=settings.gateway_host, port=settings.gateway_port,
                log_level=settings.log_level.lower())
    return 0


# --- batch ----------------------------------------------------------------------------------
def batch_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="batch_command", required=True)
    submit = sub.add_parser("submit", help="upload a JSONL file and start a batch; prints its id")
    submit.add_argument("file", type=Path)
    submit.add_argument("--endpoint", default="/v1/chat/completions",
                        help="/v1/chat/completions (default) or /v1/completions")
    submit.add_argument("--completion-window", default="24h")
    submit.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--callback-url", help="webhook POSTed when the batch ends")
    submit.add_argument("--wait", action="store_true",
                        help="show progress until it ends; exit 1 unless it completed")
    for name, help_text in (("status", "print a batch"), ("cancel", "cancel a batch")):
        sub.add_parser(name, help=help_text).add_argument("batch_id")
    results = sub.add_parser("results", help="download a finished batch's output (and error) file")
    results.add_argument("batch_id")
    results.add_argument("-o", "--output", type=Path, required=True, help="output file (answered lines)")
    results.add_argument("--errors", type=Path, help="error file (failed / unfinished lines)")
    for parser in sub.choices.values():
        parser.add_argument("--gateway", dest="gateway_url", help="gateway URL (default: QINFER_GATEWAY_URL)")
        parser.add_argument("--api-key", dest="api_key", help="bearer key (default: QINFER_API_KEY)")


def batch(settings: Settings, args: argparse.Namespace) -> int:
    api = GatewayAPI(settings.gateway_url, settings.api_key)
    return {"submit": _submit, "status": _status, "cancel": _cancel, "results": _results}[
        args.batch_command](api, args)


class GatewayAPI:
    """The few Batch API calls the CLI makes (stdlib HTTP: the CLI needs no extra);
    an error answer exits with the gateway's message."""

    def __init__(self, url: str, api_key: str | None):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        with self._open(method, path, data, headers) as reply:
            return json.load(reply)

    def upload(self, path: Path, purpose: str) -> dict:
        """POST /v1/files as multipart, streaming the file from disk."""
        boundary = uuid.uuid4().hex
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
                "Content-Type: application/jsonl\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}",
                   "Content-Length": str(len(head) + path.stat().st_size + len(tail))}
        with open(path, "rb") as f:
            body = itertools.chain([head], iter(lambda: f.read(1 << 20), b""), [tail])
            with self._open("POST", "/v1/files", body, headers) as reply:
                return json.load(reply)

    def download(self, file_id: str, target: Path) -> int:
        with self._open("GET", f"/v1/files/{file_id}/content") as reply, open(target, "wb") as out:
            shutil.copyfileobj(reply, out)
        with open(target, "rb") as f:
            return sum(1 for _ in f)

    def _open(self, method: str, path: str, data=None, headers: dict | None = None):
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={**self.headers, **(headers or {})})
        try:
            return urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as e:
            sys.exit(f"gateway answered {e.code}: {_error_message(e.read())}")
        except urllib.error.URLError as e:
            sys.exit(f"cannot reach the gateway at {self.url}: {e.reason}")


def _error_message(body: bytes) -> str:
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")


def _submit(api: GatewayAPI, args) -> int:
    if not args.file.is_file():
        sys.exit(f"no file {args.file}")
    uploaded = api.upload(args.file, "batch")
    body = {"input_file_id": uploaded["id"], "endpoint": args.endpoint,
            "completion_window": args.completion_window, "metadata": _metadata(args.metadata) or None,
            "callback_url": args.callback_url}
    created = api.call("POST", "/v1/batches", {k: v for k, v in body.items() if v is not None})
    if args.wait:
        final = _wait(api, created["id"])
        counts = final["request_counts"]
        print(f"{final['id']} {final['status']}: {counts['completed']} completed, {counts['failed']} failed "
              f"of {counts['total']}", file=sys.stderr)
    print(created["id"])        # stdout holds only the id: BATCH=$(qinfer batch submit ...)
    return 0 if not args.wait or final["status"] == "completed" else 1


def _metadata(pairs: list[str]) -> dict:
    if any("=" not in pair for pair in pairs):
        sys.exit("--metadata takes KEY=VALUE")
    return dict(pair.split("=", 1) for pair in pairs)


def _wait(api: GatewayAPI, batch_id: str, poll_s: float = 0.5) -> dict:
    """Poll until the batch ends, with a progress bar of completed + failed of total."""
    from tqdm import tqdm

    with tqdm(desc=batch_id, unit="req", file=sys.stderr) as bar:
        while True:
            batch = api.call("GET", f"/v1/batches/{batch_id}")
            counts = batch["request_counts"]
            bar.total = counts["total"] or None
            bar.n = counts["completed"] + counts["failed"]
            bar.set_postfix(status=batch["status"], failed=counts["failed"], refresh=False)
            bar.refresh()
            if batch["status"] in TERMINAL:
                return batch
            time.sleep(poll_s)


def _status(api: GatewayAPI, args) -> int:
    _print(api.call("GET", f"/v1/batches/{args.batch_id}"))
    return 0


def _cancel(api: GatewayAPI, args) -> int:
    _print(api.call("POST", f"/v1/batches/{args.batch_id}/cancel"))
    return 0


def _results(api: GatewayAPI, args) -> int:
    batch = api.call("GET", f"/v1/batches/{args.batch_id}")
    if batch["status"] not in TERMINAL:
        sys.exit(f"batch {args.batch_id} is {batch['status']}: its files are written when it ends")
    for file_id, target, kind in ((batch.get("output_file_id"), args.output, "output"),
                                  (batch.get("error_file_id"), args.errors, "error")):
        if target is None:
            continue
        num_lines = api.download(file_id, target) if file_id else _empty(target)
        print(f"{kind}: {num_lines} lines -> {target}")
    return 0


def _empty(target: Path) -> int:
    target.write_bytes(b"")
    return 0


def _print(obj: dict) -> None:
    print(json.dumps(obj, indent=2))
