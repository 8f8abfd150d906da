"""The command line: ``python -m ascan [demo|bench|claims|variants|train|validate|train-diffusion|export]``
(one module per command)."""
from __future__ import annotations

import sys

from ..complexity import variants_table
from . import bench, claims, demo, export, train

USAGE = """usage: python -m ascan [COMMAND] [options]

with no command: build ascan_t fused and eager, check they agree, time both, show the kernels
that ran (`python -m ascan demo --help` for its options)

commands:
  demo      the above, with options (--model, --batch, --size, --runs)
  bench     latency of the classifiers (eager, fused, compile) and timm peers; table, JSON, PNG
  claims    the paper's headline claims next to what is measured or computed here
  variants  parameters and MACs of every classifier variant (the README's table)
  train     train a classifier (no options: ascan_t on the embedded digits); torchrun for DDP/FSDP2
  validate  held-out top-1 of a classifier checkpoint
  train-diffusion  train a diffusion UNet (no options: class-conditional on the digits, PNG grid)
  export    write a model as ONNX, .pt2, AOTInductor or OpenVINO, then check it against eager
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    # No command, or only options: the demo (`python -m ascan --batch 1`).
    cmd, rest = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else ("demo", argv)
    if cmd == "variants":
        print(variants_table())
        return 0
    commands = {"demo": demo.main, "bench": bench.main, "claims": claims.main, "train": train.train_main,
                "validate": train.validate_main, "train-diffusion": train.diffusion_main, "export": export.main}
    if cmd not in commands:
        print(f"python -m ascan: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return commands[cmd](rest)
