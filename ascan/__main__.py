"""``python -m ascan [demo|bench|claims|variants]``: see ascan/cli/."""
import sys

from .cli import main

sys.exit(main())
