"""Parameter and MAC counts, computed by running the model (not typed in).

``python -m ascan variants`` (or ``python -m ascan.complexity``) prints the README's variants table.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .models.registry import build_model, list_models


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, input_size: tuple[int, ...] = (1, 3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass (PyTorch's FLOP counter / 2).

    Counts matmuls, convolutions and attention (the ops that dominate; run the model on
    the meta device so attention is counted through its math decomposition); elementwise
    ops and norms are not counted, as is customary for MAC tables.
    """
    p = next(model.parameters(), None)
    x = torch.randn(*input_size, device=p.device if p is not None else "cpu")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(x)
    return counter.get_total_flops() // 2


def variants_table(names: list[str] | None = None, resolution: int = 224) -> str:
    """Markdown table of params and MACs per classifier variant at ``resolution``^2."""
    from .models.classifier import CONFIGS

    names = names or [n for n in CONFIGS if n in list_models()]
    rows = ["| model | stage layouts (C/T) | widths | params (M) | MACs (G) @%d^2 |" % resolution,
            "|---|---|---|---:|---:|"]
    for n in names:
        cfg = CONFIGS[n]
        with torch.device("meta"):  # shapes only: no memory, no compute
            m = build_model(n, fused=False)
        rows.append(f"| `{n}` | {' / '.join(cfg.layouts)} | {'-'.join(map(str, cfg.dims))} | "
                    f"{count_params(m) / 1e6:.1f} | {count_macs(m, (1, 3, resolution, resolution)) / 1e9:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(variants_table())
