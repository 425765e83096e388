"""python -m qinfer.worker --model DIR --redis URL ...  (the flags of `qinfer worker`)."""
import argparse
import sys

from qinfer.config import configure_logging
from qinfer.errors import needs_extra, run_command
from qinfer.worker.options import add_worker_options, worker_configs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qinfer.worker", description=__doc__)
    parser.add_argument("--redis", dest="redis_url", help="Redis URL (default: QINFER_REDIS_URL)")
    parser.add_argument("--log-level", help="default: QINFER_LOG_LEVEL or INFO")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    add_worker_options(parser)
    args = parser.parse_args(argv)
    return run_command(lambda: _serve(args), parser.prog, debug=args.debug)


def _serve(args) -> int:
    settings, engine_config = worker_configs(args)
    configure_logging(settings.log_level)
    with needs_extra("the worker"):
        from qinfer.worker.run import run_worker

        run_worker(settings, engine_config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
