"""Forward + backward of each fused CPU impl against eager at the default trainers' shapes,
interleaved: ``python -m bench.train_ops``. These numbers are why the registry does not
prefer those impls under autograd (``ascan_kernels._common.SLOWER_IN_TRAINING``); the
rows force the impl, so they measure it whatever the registry would pick."""
from __future__ import annotations

import statistics
import time

import torch

import ascan_kernels as K


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
        ts: dict[str, list[float]] = {"eager": [], "cpu": []}
        for impl in ts:
            step(impl)
        for i in range(reps):
            for impl in (["eager", "cpu"] if i % 2 else ["cpu", "eager"]):
                t0 = time.perf_counter()
                step(impl)
                ts[impl].append((time.perf_counter() - t0) * 1e3)
        q = {k: statistics.quantiles(v, n=4, method="inclusive") for k, v in ts.items()}
        print(f"{op:15s} {label:28s} eager {q['eager'][1]:7.3f} ms [{q['eager'][0]:.3f}-{q['eager'][2]:.3f}]  "
              f"cpu {q['cpu'][1]:7.3f} ms [{q['cpu'][0]:.3f}-{q['cpu'][2]:.3f}]  "
              f"cpu speed {q['eager'][1] / q['cpu'][1]:.2f}x eager")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
