"""Parameter and MAC counts, computed by running the model (not typed in).

``python -m ascan variants`` (or ``python -m ascan.complexity``) prints the README's variants table.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .models.classifier import CONFIGS
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


def segmentation_summary(names: tuple[str, ...] = ("ascan_t_seg", "ascan_s_seg"), resolution: int = 512) -> str:
    """One line per segmenter: params and MACs at ``resolution``^2, total and backbone.

    Built on the meta device (shapes only), counted as :func:`count_macs` counts.
    """
    lines, size = [], (1, 3, resolution, resolution)
    for n in names:
        with torch.device("meta"):
            m = build_model(n, fused=False)
        lines.append(f"{n}: {count_params(m) / 1e6:.2f}M params (backbone {count_params(m.backbone) / 1e6:.2f}M), "
                     f"{count_macs(m, size) / 1e9:.2f} GMACs @{resolution}^2 "
                     f"(backbone {count_macs(m.backbone, size) / 1e9:.2f})")
    return "\n".join(lines)


if __name__ == "__main__":
    print(variants_table())
