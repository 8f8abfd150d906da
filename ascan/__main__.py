"""``python -m ascan [demo|bench|claims|variants]``: see ascan/cli/."""
import sys

import ascan_kernels as K

from .cli import main

sys.exit(K.run_cli(main))
