"""``python -m ascan_kernels``: versions, device, build and every op x impl with "ok" or why not."""
import sys

from .info import main

sys.exit(main())
