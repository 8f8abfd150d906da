"""Forward + backward of each fused CPU impl against eager at the default trainers' shapes,
interleaved: ``python -m bench.train_ops``. These numbers are why the registry does not
prefer those impls under autograd (``ascan_kernels._common.SLOWER_IN_TRAINING``); the
rows force the impl, so they measure it whatever the registry would pick."""
from __future__ import annotations

import torch

import ascan_kernels as K
from ascan.cli.bench import time_interleaved, verdict


def _t(*shape):
    return torch.randn(*shape, requires_grad=True)


# (op, label, inputs): ascan_t's stage-3 MLP at 32x32 (256 tokens x 256), the tiny UNet's level 1 at 8x8
CASES = [
    ("linear_gelu", "ascan_t s3 (256x256->1024)", lambda: (_t(256, 256), _t(1024, 256), _t(1024))),
    ("linear_gelu", "unet l1 (1024x128->512)", lambda: (_t(1024, 128), _t(512, 128), _t(512))),
    ("linear_add", "ascan_t s3 (256x1024->256)", lambda: (_t(256, 1024), _t(256, 1024), _t(256), _t(256, 256))),
    ("linear_add", "unet l1 (1024x512->128)", lambda: (_t(1024, 512), _t(128, 512), _t(128), _t(1024, 128))),
    ("add_layer_norm", "ascan_t s3 (256x256)", lambda: (_t(256, 256), _t(256, 256), _t(256), _t(256), 1e-5)),
]


def main(reps: int = 30) -> int:
    torch.manual_seed(0)
    for op, label, make in CASES:
        fn, args = getattr(K, op), make()

        def step(impl):
            with K.use(**{op: impl}):
                out = fn(*args)
            (out[1] if isinstance(out, tuple) else out).sum().backward()

        if K.available(op).get("cpu") != "ok":
            print(f"{op:15s} {label:28s} cpu impl unavailable: {K.available(op).get('cpu')}")
            continue
        t = time_interleaved({impl: (lambda impl=impl: step(impl)) for impl in ("eager", "cpu")}, reps, 1,
                             torch.device("cpu"))
        e, c = t["eager"], t["cpu"]
        print(f"{op:15s} {label:28s} eager {e.cell()} ms  cpu {c.cell()} ms  "
              f"cpu speed {e.median_ms / c.median_ms:.2f}x eager: {verdict(c, e).text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
