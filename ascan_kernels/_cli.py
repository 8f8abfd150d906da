"""Shared entry-point wrapper for ``python -m ascan`` and ``python -m ascan_kernels``."""
from __future__ import annotations

import os
import sys
from typing import Callable


def run_cli(main: Callable[[], int | None]) -> int:
    """Run ``main`` and return its exit status; a reader that went away is not an error.

    ``python -m ascan_kernels | grep -q ...`` or ``| head`` closes the pipe as soon as the reader
    has what it wants. Python then raises ``BrokenPipeError`` on the next flush, which would print a
    traceback and fail a ``set -o pipefail`` script. Like ripgrep, we stop quietly with status 0;
    stdout is pointed at devnull first so the interpreter's own final flush cannot raise again.
    """
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    return int(status or 0)
