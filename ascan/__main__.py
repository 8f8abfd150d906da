"""``python -m ascan [demo|bench|claims|variants]``: see ascan/cli/."""
import sys

from ascan_kernels._cli import run_cli

from .cli import main

sys.exit(run_cli(main))
