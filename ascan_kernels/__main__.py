"""``python -m ascan_kernels``: versions, device, build and every op x impl with "ok" or why not."""
import sys

from ._cli import run_cli
from .info import main

sys.exit(run_cli(main))
