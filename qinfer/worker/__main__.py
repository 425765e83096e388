"""python -m qinfer.worker --model DIR --redis URL ...  (the flags of `qinfer worker`)."""
import argparse
import sys

from qinfer.config import configure_logging
from qinfer.worker.options import add_worker_options, worker_configs
from qinfer.worker.run import run_worker


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qinfer.worker", description=__doc__)
    parser.add_argument("--redis", dest="redis_url", help="Redis URL (default: QINFER_REDIS_URL)")
    parser.add_argument("--log-level", help="default: QINFER_LOG_LEVEL or INFO")
    add_worker_options(parser)
    settings, engine_config = worker_configs(parser.parse_args(argv))
    configure_logging(settings.log_level)
    run_worker(settings, engine_config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
