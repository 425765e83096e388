"""python -m qinfer.worker --model DIR --redis URL ...  (same as `qinfer worker`)."""
import sys

from qinfer.cli import main

sys.exit(main(["worker", *sys.argv[1:]]))
