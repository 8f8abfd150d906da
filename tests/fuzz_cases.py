#!/usr/bin/env python
"""Deterministic fuzz cases for every ascan_kernels op x impl x dtype, checked against a
float64 reference written here, apart from the package (tests/test_fuzz_ops.py runs them).

A case id is ``<op>-<impl>-<dtype>-<kind>-<n>``, e.g. ``conv_bn_gelu-cpu-bf16-dead_axis-3``:
``impl`` is a registry impl name (forced with ``K.use``) or ``auto`` (no forcing: must never
decline), ``dtype`` is f32 / bf16 / f16, ``kind`` the family of inputs and ``n`` the
variant. The inputs of ``(op, kind, n)`` are a pure function of the seed
(``ASCAN_FUZZ_SEED``, default 0), the same for every impl and dtype.

    python tests/fuzz_cases.py --worker         # ids on stdin, one JSON result line each on stdout
    python tests/fuzz_cases.py --list [--default]
    python tests/fuzz_cases.py --run ID [ID ...] # in-process, for reproducing one case

What a case checks (``run_case``):

* a forced impl that raises ``KernelUnavailableError`` is "declined" (reason recorded);
  ``auto`` declining, or any other exception, fails;
* output shape = the float64 reference's, dtype = what ``K.use(op="eager")`` returns;
* non-finite positions: NaN exactly where the float64 reference (the documented formula,
  evaluated literally in IEEE float64) is NaN, +-Inf where it is +-Inf. So a NaN reaches
  exactly the outputs that depend on it (for a conv: whose receptive field, in its group,
  contains it; for LayerNorm: its row; GroupNorm: its (sample, group)). Lenient positions:
  GELU/SiLU of -inf (the limit is 0, IEEE gives -inf * 0 = NaN) may be NaN or 0, and so
  may the query rows that contain a NaN when CPU ``sdpa`` ran (documented exception in
  ascan_kernels/ops/attention.py);
* values at the finite positions (flash-attention's rule): max |impl - fp64| <=
  2 x max |eager in the same dtype - fp64| + floor, floor = eps(dtype) * max(1, max|ref|);
  the eager error used is capped by a sanity bound (TOLERANCES), so a wrong eager
  reference fails its own case and does not widen the others';
* the impl did not modify its inputs.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import traceback

if __name__ == "__main__":
    # The Triton kernels run on CPU tensors only under the interpreter, which must be on
    # before anything imports triton (ascan_kernels does, on import).
    os.environ.setdefault("TRITON_INTERPRET", "1")

SEED = int(os.environ.get("ASCAN_FUZZ_SEED", "0"))
ODD = (1, 3, 7, 17, 33, 65, 127)
DTYPES = ("f32", "bf16", "f16")

# Every impl each op registers (tests/test_fuzz_ops.py checks this against the registry).
IMPLS = {
    "conv_bias_act": ("cuda", "triton", "cpu", "eager"),
    "conv_bn_gelu": ("cuda", "triton", "cpu", "eager"),
    "conv_bn_add": ("cuda", "triton", "cpu", "eager"),
    "conv_bn": ("cuda", "triton", "cpu", "eager"),
    "attention": ("flash_attn4", "flash_attn", "triton", "sdpa", "eager"),
    "linear_gelu": ("triton", "cpu", "eager"),
    "linear_add": ("triton", "cpu", "eager"),
    "layer_norm": ("cuda", "triton", "eager"),
    "add_layer_norm": ("triton", "cpu", "eager"),
    "group_norm_silu": ("cuda", "triton", "cpu", "eager"),
}
CONV_OPS = ("conv_bias_act", "conv_bn_gelu", "conv_bn_add", "conv_bn")
BN_OPS = CONV_OPS[1:]  # the conv ops with BatchNorm parameters (and a folded= argument)
CONV_ACTS = ("none", "gelu", "gelu_tanh", "silu")  # conv_bias_act's activations
KINDS = {
    **{op: ("basic", "geom", "model", "dead_axis", "noncontig", "channels_last", "folded", "wide",
            "empty", "nan", "inf", "nan_params") for op in BN_OPS},
    "conv_bias_act": ("basic", "geom", "model", "dead_axis", "noncontig", "channels_last", "wide",
                      "empty", "nan", "inf", "nan_params"),
    "attention": ("basic", "cross", "bool_mask", "float_mask", "dead_rows", "bcast_mask", "scale",
                  "noncontig", "empty", "nan_q", "nan_kv", "nan_k_masked", "inf_v", "long"),
    "linear_gelu": ("basic", "wide", "nobias", "noncontig", "empty", "nan", "nan_w", "inf", "tanh"),
    "linear_add": ("basic", "wide", "nobias", "noncontig", "empty", "nan", "nan_w", "inf"),
    "layer_norm": ("basic", "noaffine", "fp32_params", "noncontig", "empty", "nan", "inf",
                   "large_mean", "c1", "wide", "nan_params"),
    "add_layer_norm": ("basic", "noaffine", "fp32_params", "noncontig", "empty", "nan", "inf",
                       "large_mean", "c1", "wide", "nan_params"),
    "group_norm_silu": ("basic", "film", "film_fp32", "film_views", "channels_last", "noncontig", "ndim",
                        "empty", "nan", "inf", "large_mean", "groups", "nan_params"),
}
# Two kinds change how the op is called, not its inputs: "autocast" (float32 inputs inside
# torch.autocast("cpu", dtype); no f32 case) and "grad" (inputs require grad, grad enabled).
CONTEXT_KINDS = ("autocast", "grad")
_BASE_KINDS = {**{op: ("basic", "model", "noncontig", "channels_last") for op in CONV_OPS},
               "attention": ("basic", "bool_mask", "float_mask", "noncontig", "dead_rows"),
               "linear_gelu": ("basic", "noncontig", "tanh"), "linear_add": ("basic", "noncontig"),
               "layer_norm": ("basic", "noncontig"), "add_layer_norm": ("basic", "noncontig"),
               "group_norm_silu": ("basic", "film", "channels_last")}
KINDS = {op: kinds + CONTEXT_KINDS for op, kinds in KINDS.items()}
VARIANTS = 6             # n = 0..VARIANTS-1 per (op, kind)
MAX_WORK = 3_000_000     # multiply-adds (or elements x 8 for norms) per case
# Impls that run CUDA tensors only: the default slice (on the CPU) leaves them out.
GPU_ONLY = ("cuda", "flash_attn", "flash_attn4")
TRITON_MAX_WORK = 600_000  # the interpreter is slow: larger specs get no triton case
TRITON_DEFAULT_WORK = 40_000
DEFAULT_SIZE = 84
SELFTEST_SEGV = "selftest-segv"  # a case id that makes the worker crash (tests the harness)


# ---------------------------------------------------------------------------------------
# Case specs: plain Python, no torch
# ---------------------------------------------------------------------------------------
def _rng(op: str, kind: str, n: int, seed: int = SEED) -> random.Random:
    return random.Random(f"ascan-fuzz/{seed}/{op}/{kind}/{n}")


def _out_len(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _axis_dead(size, k, s, p, d):
    """Every output position along this axis reads only zero padding (written from the
    definition: no tap of any output lands inside [0, size))."""
    out = _out_len(size, k, s, p, d)
    if out < 1:
        return False
    return not any(0 <= o * s - p + j * d < size for o in range(out) for j in range(k))


def _conv_spec(op, kind, n, rng):
    sp = dict(op=op, kind=kind, N=rng.choice((1, 2, 3)), groups=1, stride=(1, 1), padding=(0, 0),
              dilation=(1, 1), bias=rng.random() < 0.7, x_layout="contig", w_layout="contig",
              r_layout="contig", folded=False, approximate=rng.choice(("none", "tanh")) if op == "conv_bn_gelu" else "none",
              eps=rng.choice((1e-5, 1e-3)), poison=[], r_poison=[],
              act=rng.choice(CONV_ACTS) if op == "conv_bias_act" else None,
              residual=op == "conv_bn_add" or (op == "conv_bias_act" and rng.random() < 0.5))
    model = ((3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0))
    style = {"basic": rng.choice(("model", "plain")), "geom": "random", "model": "model",
             "noncontig": rng.choice(("model", "random")), "channels_last": rng.choice(("model", "random")),
             "folded": rng.choice(("model", "random")), "wide": "wide", "empty": rng.choice(("model", "random")),
             "nan": rng.choice(("model", "random")), "inf": rng.choice(("model", "random")),
             "nan_params": rng.choice(("model", "random")), "dead_axis": "dead"}[kind]
    for _ in range(1000):
        if style == "dead":
            if n == 0:  # the shape that used to SIGSEGV the process
                H, W, kh, kw, s, p, d = 5, 1, 1, 1, (2, 2), (1, 1), (2, 2)
            else:
                H, W = rng.choice((1, 2, 3, 7)), rng.choice((1, 2, 3))
                kh, kw = rng.choice((1, 1, 3)), rng.choice((1, 1, 3))
                s = (rng.choice((1, 2, 3)), rng.choice((2, 3)))
                p = (rng.choice((0, 1, 2)), rng.choice((1, 2, 3)))
                d = (rng.choice((1, 2)), rng.choice((1, 2, 3)))
            g = 1 if rng.random() < 0.7 else rng.choice((2, 3))
            cg, cog = rng.choice((1, 3, 4, 7)), rng.choice((1, 3, 8))
        elif style == "model":
            k, s1, p1 = rng.choice(model)
            kh = kw = k
            s, p, d = (s1, s1), (p1, p1), (1, 1)
            H, W = rng.choice(ODD[:5]), rng.choice(ODD[:5])
            g, cg, cog = 1, rng.choice((1, 3, 4, 7, 16, 17)), rng.choice((1, 3, 8, 16, 17))
        elif style == "plain":
            kh = kw = rng.choice((1, 3, 5))
            s, d = (1, 1), (1, 1)
            p = (rng.choice((0, kh // 2)),) * 2
            H, W = rng.choice(ODD[:5]), rng.choice(ODD[:5])
            g, cg, cog = 1, rng.choice((1, 3, 7, 17, 33)), rng.choice((1, 3, 7, 17))
        elif style == "wide":
            kh = kw = rng.choice((1, 3))
            s, d, p = (rng.choice((1, 2)),) * 2, (1, 1), (kh // 2,) * 2
            H, W = rng.choice((1, 3, 7)), rng.choice((1, 3, 7))
            g = 1
            cg, cog = rng.choice(((65, 17), (127, 7), (17, 127), (64, 65), (127, 128)))
        else:  # random
            kh, kw = rng.choice((1, 2, 3, 5)), rng.choice((1, 2, 3, 5))
            if rng.random() < 0.5:
                kw = kh
            s = (rng.choice((1, 2, 3)), rng.choice((1, 2, 3)))
            p = (rng.choice((0, 1, 2)), rng.choice((0, 1, 2)))
            d = (rng.choice((1, 1, 2, 3)), rng.choice((1, 1, 2, 3)))
            H, W = rng.choice(ODD[:6]), rng.choice(ODD[:6])
            g = rng.choice((1, 1, 2, 3, 4))
            cg, cog = rng.choice((1, 2, 3, 7, 8)), rng.choice((1, 2, 3, 8))
            if kind == "geom" and rng.random() < 0.3:  # depthwise
                cg, cog, g = 1, rng.choice((1, 2)), rng.choice((3, 7, 16, 17))
        ho, wo = _out_len(H, kh, s[0], p[0], d[0]), _out_len(W, kw, s[1], p[1], d[1])
        if ho < 1 or wo < 1:
            continue
        dead = _axis_dead(H, kh, s[0], p[0], d[0]) or _axis_dead(W, kw, s[1], p[1], d[1])
        if dead != (style == "dead"):
            continue
        cin, cout = g * cg, g * cog
        work = sp["N"] * cout * ho * wo * cg * kh * kw
        if work > MAX_WORK:
            continue
        break
    else:  # pragma: no cover
        raise RuntimeError(f"no conv spec found for {op}/{kind}/{n}")
    sp.update(H=H, W=W, kh=kh, kw=kw, stride=s, padding=p, dilation=d, groups=g, cin=cin, cout=cout,
              ho=ho, wo=wo, work=max(1, work))
    sp["p_layout"], sp["p_poison"] = "contig", []
    if kind == "noncontig":
        sp["x_layout"] = rng.choice(("t", "slice1", "slice2", "offset", "expand"))
        sp["w_layout"] = rng.choice(("contig", "t", "cl"))
        sp["r_layout"] = rng.choice(("t", "slice1", "offset"))
        sp["p_layout"] = rng.choice(("contig", "slice"))
    elif kind == "dead_axis":
        sp["x_layout"] = rng.choice(("contig", "cl"))
        sp["w_layout"] = rng.choice(("contig", "cl"))
        sp["r_layout"] = rng.choice(("contig", "cl"))
    elif kind == "channels_last":
        sp["x_layout"], sp["r_layout"] = "cl", "cl"
        sp["w_layout"] = rng.choice(("contig", "cl"))
    elif kind in ("nan", "inf", "geom", "folded", "empty", "nan_params"):
        sp["x_layout"] = rng.choice(("contig", "cl"))
        sp["r_layout"] = rng.choice(("contig", "cl"))
    if kind == "dead_axis" and n == 0:
        sp.update(x_layout="cl", bias=True, N=1)
    if kind == "folded":
        sp["folded"] = True
    if kind == "empty":
        sp["N"], sp["work"] = 0, 1
    if kind in ("nan", "inf"):
        vals = ("nan",) if kind == "nan" else ("inf", "-inf")
        shape = (sp["N"], cin, H, W)
        sp["poison"] = [(_rand_index(rng, shape), rng.choice(vals)) for _ in range(rng.choice((1, 2, 3)))]
        if sp["residual"] and rng.random() < 0.5:
            shape = (sp["N"], cout, ho, wo)
            sp["r_poison"] = [(_rand_index(rng, shape), rng.choice(vals))]
    if kind == "nan_params":  # NaN in one channel's bias / BN parameter: that channel only
        if op == "conv_bias_act":
            sp["bias"] = True  # its only per-channel parameter
        names = (["gamma", "beta", "mean", "var"] if op in BN_OPS else []) + (["b"] if sp["bias"] else [])
        sp["p_poison"] = [(rng.choice(names), rng.randrange(cout), "nan") for _ in range(rng.choice((1, 2)))]
    return sp


def _rand_index(rng, shape):
    return tuple(rng.randrange(s) for s in shape)


def _attention_spec(op, kind, n, rng):
    for _ in range(1000):
        B, H = rng.choice((1, 2, 3)), rng.choice((1, 2, 3))
        lens = ODD if kind == "long" else ODD[:6]
        Lq = rng.choice(lens)
        Lk = Lq if kind == "basic" and rng.random() < 0.6 else rng.choice(lens)
        if kind == "cross" and Lk == Lq:
            continue
        if kind == "long" and max(Lq, Lk) < 65:
            continue
        if kind == "nan_k_masked" and Lk < 3:
            continue
        D = rng.choice((16, 32, 64, 16, 32, 1, 7, 17, 33))
        Dv = D if rng.random() < 0.85 else rng.choice((1, 7, 16, 33))
        work = B * H * Lq * Lk * (D + Dv)
        if work <= MAX_WORK:
            break
    sp = dict(op=op, kind=kind, B=B, H=H, Lq=Lq, Lk=Lk, D=D, Dv=Dv, mask=None, mask_shape=None, mask_layout="contig",
              mask_dtype="x", dead_rows=0, scale=None, q_layout="contig", k_layout="contig",
              v_layout="contig", poison=[], work=max(1, work), neg=None)
    full = (B, H, Lq, Lk)
    shapes = [full, (B, 1, 1, Lk), (1, H, Lq, Lk), (Lq, Lk), (B, 1, Lq, 1), (1, 1, 1, Lk)]
    if kind in ("bool_mask", "float_mask", "dead_rows", "bcast_mask"):
        sp["mask"] = {"bool_mask": "bool", "float_mask": "float"}.get(kind, rng.choice(("bool", "float")))
        sp["mask_shape"] = full if kind in ("bool_mask", "float_mask") and rng.random() < 0.6 else rng.choice(shapes)
        if sp["mask"] == "float":
            sp["mask_dtype"] = rng.choice(("x", "f32"))
            sp["neg"] = rng.choice(("-inf", -1e4, -30.0))
        if kind == "dead_rows":
            sp["dead_rows"] = rng.choice((1, 2, 3))
            sp["neg"] = "-inf"
        sp["mask_layout"] = rng.choice(("contig", "contig", "t", "slice", "expand"))
    if kind == "scale":
        sp["scale"] = rng.choice((0.05, 0.3, 1.0, 2.5, 0.0, -0.7))
    if kind == "noncontig":
        for t in ("q", "k", "v"):
            sp[f"{t}_layout"] = rng.choice(("blhd", "slice_d", "offset", "contig", "expand_h"))
    if kind == "empty":
        which = rng.choice(("B", "Lq", "Lk"))
        sp[which] = 0
        sp["work"] = 1
        if rng.random() < 0.5:
            sp["mask"], sp["mask_shape"] = "bool", (sp["B"], sp["H"], sp["Lq"], sp["Lk"])
    if kind == "nan_q":
        sp["poison"] = [(("q",) + _rand_index(rng, (B, H, Lq, D)), "nan") for _ in range(rng.choice((1, 2)))]
    if kind == "nan_kv":
        sp["poison"] = [((t,) + _rand_index(rng, (B, H, Lk, D if t == "k" else Dv)), "nan")
                        for t in rng.sample(("k", "v"), rng.choice((1, 2)))]
    if kind == "nan_k_masked":  # NaN in a key that the (bool) mask hides from every query
        j = rng.randrange(1, Lk)
        sp["poison"] = [(("k", rng.randrange(B), rng.randrange(H), j, rng.randrange(D)), "nan")]
        sp["mask"], sp["mask_shape"], sp["hidden_key"] = "bool", full, j
    if kind == "inf_v":
        sp["poison"] = [(("v",) + _rand_index(rng, (B, H, Lk, Dv)), rng.choice(("inf", "-inf")))
                        for _ in range(rng.choice((1, 2)))]
    if kind in ("nan_q", "nan_kv") and rng.random() < 0.4:
        # a mask that keeps every poisoned key: masked keys do not count as "depends on"
        sp["mask"], sp["mask_shape"], sp["neg"] = "bool", full, None
    return sp


def _lead_dims(rng, max_rows=257):
    while True:
        lead = rng.choice(((), (rng.choice(ODD),), (rng.choice(ODD[:4]), rng.choice(ODD[:5])),
                           (rng.choice((1, 2, 3)), rng.choice((1, 3, 7)), rng.choice(ODD[:5]))))
        if math.prod(lead) <= max_rows:
            return lead


def _linear_spec(op, kind, n, rng):
    for _ in range(1000):
        lead = _lead_dims(rng)
        K, N = rng.choice(ODD), rng.choice(ODD)
        if kind == "wide":
            K, N = rng.choice(((127, 65), (65, 127), (127, 127), (128, 33), (33, 256)))
        work = max(1, math.prod(lead)) * K * N
        if work <= MAX_WORK:
            break
    sp = dict(op=op, kind=kind, lead=lead, K=K, N=N, bias=kind != "nobias" and rng.random() < 0.85,
              approximate="tanh" if kind == "tanh" else "none", x_layout="contig", w_layout="contig",
              r_layout="contig", poison=[], r_poison=[], work=work)
    if kind == "noncontig":
        sp["x_layout"] = rng.choice(("t", "slice", "offset", "expand"))
        sp["w_layout"] = rng.choice(("t", "slice", "contig"))
        sp["r_layout"] = rng.choice(("t", "slice", "offset"))
        sp["p_layout"] = rng.choice(("contig", "slice"))
        if sp["x_layout"] in ("t", "expand") and len(lead) == 0:
            sp["lead"] = (3,)
        sp["work"] = max(1, math.prod(sp["lead"])) * K * N
    if kind == "empty":
        sp["lead"] = rng.choice(((0,), (2, 0), (0, 3)))
        sp["work"] = 1
    if kind == "nan_w":
        sp["w_poison"] = [(_rand_index(rng, (N, K)), "nan")]
    if kind in ("nan", "inf"):
        vals = ("nan",) if kind == "nan" else ("inf", "-inf")
        shape = (*sp["lead"], K)
        sp["poison"] = [(_rand_index(rng, shape), rng.choice(vals)) for _ in range(rng.choice((1, 2)))]
        if op == "linear_add" and rng.random() < 0.5:
            sp["r_poison"] = [(_rand_index(rng, (*sp["lead"], N)), rng.choice(vals))]
    return sp


def _norm_spec(op, kind, n, rng):
    lead = _lead_dims(rng)
    C = rng.choice(ODD)
    if kind == "c1":
        C = 1
    if kind == "wide":
        C, lead = rng.choice(((4096, (3,)), (4097, (2,)), (1000, (3, 2)), (2049, ())))
    sp = dict(op=op, kind=kind, lead=lead, C=C, weight=True, bias=True, param_dtype="x",
              eps=rng.choice((1e-5, 1e-6, 1e-3)), x_layout="contig", r_layout="contig", poison=[],
              r_poison=[], offset=0.0, spread=1.0, work=max(1, math.prod(lead)) * C * 8)
    if kind == "noaffine":
        sp["weight"], sp["bias"] = rng.choice(((False, False), (True, False), (False, True)))
    if kind == "fp32_params":
        sp["param_dtype"] = "f32"
    if kind == "noncontig":
        sp["x_layout"] = rng.choice(("t", "slice", "offset", "expand"))
        sp["r_layout"] = rng.choice(("t", "slice", "offset", "contig"))
        sp["p_layout"] = rng.choice(("contig", "slice"))
        if len(lead) == 0:
            sp["lead"] = (5,)
            sp["work"] = 5 * C * 8
    if kind == "empty":
        sp["lead"] = rng.choice(((0,), (2, 0), (0, 3)))
        sp["work"] = 1
    if kind in ("nan", "inf"):
        vals = ("nan",) if kind == "nan" else ("inf", "-inf")
        shape = (*sp["lead"], C)
        sp["poison"] = [(_rand_index(rng, shape), rng.choice(vals)) for _ in range(rng.choice((1, 2)))]
        if op == "add_layer_norm" and rng.random() < 0.5:
            sp["r_poison"] = [(_rand_index(rng, shape), rng.choice(vals))]
    if kind == "nan_params":  # NaN in one channel's weight or bias: that column only
        names = [n_ for n_, on in (("w", sp["weight"]), ("b", sp["bias"])) if on] or ["w"]
        sp["weight"] = sp["weight"] or names == ["w"]
        sp["p_poison"] = [(rng.choice(names), rng.randrange(C), "nan")]
    if kind == "large_mean":
        sp["offset"], sp["spread"] = 50.0, 0.01
        if C == 1:
            sp["C"] = 33
            sp["work"] = max(1, math.prod(sp["lead"])) * 33 * 8
    return sp


def _gn_spec(op, kind, n, rng):
    for _ in range(1000):
        N = rng.choice((1, 2, 3))
        G = rng.choice((1, 2, 3, 4, 8, 32))
        cpg = rng.choice((1, 2, 3, 4, 8))
        if kind == "groups":
            G, cpg = rng.choice(((1, rng.choice((1, 3, 17, 33))), (rng.choice((3, 17, 32, 65)), 1)))
        C = G * cpg
        nsp = 2 if kind != "ndim" else rng.choice((1, 3))
        spatial = tuple(rng.choice(ODD[:5] if nsp < 3 else ODD[:3]) for _ in range(nsp))
        work = N * C * math.prod(spatial) * 8
        if work <= MAX_WORK // 2:
            break
    sp = dict(op=op, kind=kind, N=N, C=C, G=G, spatial=spatial, weight=rng.random() < 0.8,
              bias=rng.random() < 0.8, scale=False, shift=False, film_dtype="x", param_dtype="x",
              eps=rng.choice((1e-5, 1e-6, 1e-3)), x_layout="contig", poison=[], offset=0.0, spread=1.0,
              work=work)
    if kind in ("film", "film_fp32", "film_views"):
        sp["scale"], sp["shift"] = rng.choice(((True, True), (True, False), (False, True)))
        if kind == "film_fp32":
            sp["film_dtype"] = "f32"
        if kind == "film_views":  # emb.chunk(2, dim=1) halves, transposed or batch-broadcast FiLM
            sp["film_layout"] = rng.choice(("chunk", "t", "expand", "slice"))
            sp["p_layout"] = rng.choice(("contig", "slice"))
            sp["scale"] = sp["shift"] = True
    elif rng.random() < 0.3:
        sp["scale"], sp["shift"] = True, True
    if kind == "channels_last":
        sp["x_layout"] = "cl" if len(spatial) == 2 else "t"
        sp["param_dtype"] = rng.choice(("x", "f32"))
    if kind == "noncontig":
        sp["x_layout"] = rng.choice(("t", "slice1", "offset", "expand"))
        sp["p_layout"] = rng.choice(("contig", "slice"))
    if kind == "empty":
        sp["N"], sp["work"] = 0, 1
    if kind == "nan_params":  # NaN in weight/bias[c] (all samples) or scale/shift[n, c]: that (n, c) only
        sp["scale"] = sp["shift"] = sp["weight"] = sp["bias"] = True
        sp["p_poison"] = [(nm, (rng.randrange(N), rng.randrange(C)) if nm in ("scale", "shift") else rng.randrange(C),
                           "nan") for nm in rng.sample(("w", "b", "scale", "shift"), rng.choice((1, 2)))]
        sp["x_layout"] = rng.choice(("contig", "cl")) if len(spatial) == 2 else "contig"
    if kind in ("nan", "inf"):
        vals = ("nan",) if kind == "nan" else ("inf", "-inf")
        shape = (N, C, *spatial)
        sp["poison"] = [(_rand_index(rng, shape), rng.choice(vals)) for _ in range(rng.choice((1, 2)))]
        sp["x_layout"] = rng.choice(("contig", "cl")) if len(spatial) == 2 else "contig"
    if kind == "large_mean":
        sp["offset"], sp["spread"] = 50.0, 0.01
        sp["x_layout"] = rng.choice(("contig", "cl")) if len(spatial) == 2 else "contig"
    return sp


def make_spec(op: str, kind: str, n: int, seed: int = SEED) -> dict:
    rng = _rng(op, kind, n, seed)
    if kind in CONTEXT_KINDS:
        sp = make_spec(op, rng.choice(_BASE_KINDS[op]), rng.randrange(1000), seed)
        sp.update(kind=kind, ctx=kind, n=n)
        return sp
    if op in CONV_OPS:
        sp = _conv_spec(op, kind, n, rng)
    elif op == "attention":
        sp = _attention_spec(op, kind, n, rng)
    elif op in ("linear_gelu", "linear_add"):
        sp = _linear_spec(op, kind, n, rng)
    elif op in ("layer_norm", "add_layer_norm"):
        sp = _norm_spec(op, kind, n, rng)
    else:
        sp = _gn_spec(op, kind, n, rng)
    sp["n"] = n
    return sp


def case_id(op, impl, dt, kind, n) -> str:
    return f"{op}-{impl}-{dt}-{kind}-{n}"


def parse_id(cid: str):
    op, impl, dt, kind, n = cid.split("-")
    return op, impl, dt, kind, int(n)


_SPECS: dict = {}


def spec_of(op, kind, n, seed=SEED) -> dict:
    key = (op, kind, n, seed)
    if key not in _SPECS:
        _SPECS[key] = make_spec(op, kind, n, seed)
    return _SPECS[key]


def all_cases(seed: int = SEED) -> list[str]:
    """The full grid: op x kind x variant x impl (auto first) x dtype. Triton cases only
    for specs the interpreter runs in seconds."""
    out = []
    for op, impls in IMPLS.items():
        for kind in KINDS[op]:
            for n in range(VARIANTS):
                sp = spec_of(op, kind, n, seed)
                for impl in ("auto",) + impls:
                    if impl == "triton" and sp["work"] > TRITON_MAX_WORK:
                        continue
                    for dt in DTYPES:
                        if kind == "autocast" and dt == "f32":
                            continue
                        out.append(case_id(op, impl, dt, kind, n))
    return out


def default_cases(seed: int = SEED, size: int = DEFAULT_SIZE) -> list[str]:
    """A seeded slice of the grid for the default run: every op with every impl that can
    run here (auto and eager included), cheap specs only, plus the cases that once
    crashed the process or found a defect."""
    rng = random.Random(f"ascan-fuzz-default/{seed}")
    grid = all_cases(seed)
    must = [case_id(op, impl, "f32", "dead_axis", 0) for op in CONV_OPS for impl in ("auto", "cpu")]
    must += [case_id("conv_bn_gelu", "auto", "bf16", "dead_axis", 0),
             case_id("attention", "auto", "f32", "dead_rows", 0), case_id("attention", "sdpa", "f32", "nan_q", 0)]
    # one case of each kind of input that found a defect in the full grid (seed 0)
    must += [case_id("attention", "sdpa", "f32", "nan_k_masked", 0), case_id("group_norm_silu", "triton", "f32", "inf", 0),
             case_id("linear_gelu", "cpu", "f32", "noncontig", 1), case_id("linear_add", "cpu", "f32", "noncontig", 2)]
    picked = list(dict.fromkeys(c for c in must if c in grid))
    by_pair: dict = {}
    for c in grid:
        op, impl, dt, kind, n = parse_id(c)
        if impl in GPU_ONLY:
            continue
        limit = TRITON_DEFAULT_WORK if impl == "triton" else MAX_WORK // 3
        if spec_of(op, kind, n, seed)["work"] > limit:
            continue
        by_pair.setdefault((op, impl), []).append(c)
    pairs = sorted(by_pair)
    per_pair = {p: (1 if p[1] == "triton" else 2) for p in pairs}
    for p in pairs:
        cands = [c for c in by_pair[p] if c not in picked]
        picked += rng.sample(cands, min(per_pair[p], len(cands)))
    rest = [c for p in pairs if p[1] != "triton" for c in by_pair[p] if c not in picked]
    rng.shuffle(rest)
    picked += rest[:max(0, size - len(picked))]
    order = {c: i for i, c in enumerate(grid)}
    return sorted(picked, key=order.__getitem__)


# ---------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------
def _torch():
    import torch
    return torch


def _K():
    import ascan_kernels
    return ascan_kernels


_DT = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def _dtype(dt):
    return getattr(_torch(), _DT[dt])


class _Gen:
    """Deterministic float64 values per (spec, tensor name)."""

    def __init__(self, spec, seed=SEED):
        self.base = f"{seed}/{spec['op']}/{spec['kind']}/{spec.get('n', '')}/{sorted(spec.items())}"

    def randn(self, name, shape, std=1.0, mean=0.0):
        torch = _torch()
        g = torch.Generator().manual_seed(int.from_bytes(_hash(self.base + name), "little"))
        return torch.randn(shape, generator=g, dtype=torch.float64) * std + mean

    def rand(self, name, shape, lo=0.0, hi=1.0):
        torch = _torch()
        g = torch.Generator().manual_seed(int.from_bytes(_hash(self.base + name), "little"))
        return torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo


def _hash(s: str) -> bytes:
    import hashlib
    return hashlib.sha256(s.encode()).digest()[:7]


def _place(v, dtype, layout):
    """v (float64 values) cast to dtype, in a layout; regions of a bigger base that the
    view does not cover hold NaN, so an impl reading past its strides shows up as NaN."""
    torch = _torch()
    v = v.to(dtype)
    if layout == "contig" or v.dim() == 0:
        return v.contiguous()
    if layout == "cl":
        return v.contiguous(memory_format=torch.channels_last)
    if layout == "t":  # last two dims transposed in memory
        if v.dim() < 2:
            return v.contiguous()
        return v.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout in ("slice", "slice1", "slice2"):  # stride 2 along a dim (last / 1 / 2)
        d = {"slice": v.dim() - 1, "slice1": 1, "slice2": 2}[layout]
        d = min(d, v.dim() - 1)
        shape = list(v.shape)
        shape[d] = 2 * shape[d] + 1
        base = torch.full(shape, float("nan"), dtype=dtype)
        view = base.narrow(d, 1, 2 * v.shape[d]).unflatten(d, (v.shape[d], 2)).select(d + 1, 0) \
            if v.shape[d] else base.narrow(d, 0, 0)
        view.copy_(v)
        return view
    if layout == "offset":  # padded last dim, storage offset
        shape = list(v.shape)
        shape[-1] += 3
        base = torch.full(shape, float("nan"), dtype=dtype)
        view = base[..., 2:2 + v.shape[-1]]
        view.copy_(v)
        return view
    if layout == "chunk":  # the second half of a (N, 2C) tensor, as emb.chunk(2, dim=1) gives
        base = torch.full((*v.shape[:-1], 2 * v.shape[-1]), float("nan"), dtype=dtype)
        view = base[..., v.shape[-1]:]
        view.copy_(v)
        return view
    if layout == "expand":  # stride 0 along dim 0 (the values are repeated)
        if v.dim() < 2 or v.shape[0] == 0:
            return v.contiguous()
        return v[:1].contiguous().expand(v.shape)
    if layout == "expand_h":  # stride 0 along the heads (one k/v shared by every head)
        return v[:, :1].contiguous().expand(v.shape) if v.dim() == 4 and v.shape[1] else v.contiguous()
    if layout == "blhd":  # (B, H, L, D) as a view of (B, L, H, D) memory
        return v.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "slice_d":
        return _place(v.to(torch.float64), dtype, "slice")
    raise ValueError(layout)


def _poison(v, entries):
    for idx, val in entries:
        v[tuple(idx)] = float(val)
    return v


def _expand_values(v, layout):
    """For the "expand" layout the logical values must repeat along dim 0."""
    if layout == "expand" and v.dim() >= 2 and v.shape[0] > 0:
        return v[:1].expand(v.shape).clone()
    return v


def _norm_params(gen, spec, C, pdt):
    pv = {"w": gen.rand("w", (C,), 0.5, 1.5), "b": gen.randn("b", (C,), 0.2)}
    for name, c, val in spec.get("p_poison", []):
        if name in pv:
            pv[name][c] = float(val)
    lay = spec.get("p_layout", "contig")
    return (_place(pv["w"], pdt, lay) if spec["weight"] else None,
            _place(pv["b"], pdt, lay) if spec["bias"] else None)


def _spread(spec, dt):
    """large_mean: x = 50 + spread * noise; a spread of 0.01 is below bf16/fp16's step at
    50 (0.25 / 0.03), so those get a spread they can represent."""
    if spec["offset"] and dt != "f32":
        return 2.0
    return spec["spread"]


def build(spec: dict, dt: str):
    """(public function name, args, kwargs) for one spec in one dtype (float32 tensors for
    an autocast case, leaves that require grad for a grad case)."""
    torch = _torch()
    ctx = spec.get("ctx")
    name, args, kwargs = _build(spec, "f32" if ctx == "autocast" else dt)
    if ctx == "grad":  # activations and learnable parameters (not BN running stats, masks, folds)
        keep = {id(t) for t in _tensors(args, kwargs)}
        skip = set()
        if name in BN_OPS:
            skip = {id(args[5]), id(args[6])} | {id(t) for t in kwargs.get("folded") or ()}
        elif name == "attention":
            skip = {id(args[3])}
        for t in _tensors(args, kwargs):
            if id(t) in keep and id(t) not in skip and t.is_floating_point() and t.is_leaf:
                t.requires_grad_(True)
    return name, args, kwargs


def call_context(spec: dict, dt: str):
    """The context a case runs its calls in: no_grad, or enable_grad for "grad", plus
    torch.autocast for "autocast"."""
    import contextlib
    torch = _torch()
    stack = contextlib.ExitStack()
    ctx = spec.get("ctx")
    stack.enter_context(torch.enable_grad() if ctx == "grad" else torch.no_grad())
    if ctx == "autocast" and dt != "f32":
        stack.enter_context(torch.autocast("cpu", dtype=_dtype(dt)))
    return stack


def _build(spec: dict, dt: str):
    torch = _torch()
    dtype = _dtype(dt)
    gen = _Gen(spec)
    op = spec["op"]
    if op in CONV_OPS:
        N, cin, cout, kh, kw, g = spec["N"], spec["cin"], spec["cout"], spec["kh"], spec["kw"], spec["groups"]
        x = _poison(gen.randn("x", (N, cin, spec["H"], spec["W"])), spec["poison"])
        fan = cin // g * kh * kw
        w = gen.randn("w", (cout, cin // g, kh, kw), std=fan ** -0.5)
        x = _place(x, dtype, spec["x_layout"])
        w = _place(w, dtype, spec["w_layout"])
        sign = torch.where(gen.rand("sign", (cout,)) < 0.2, -1.0, 1.0).double()
        pv = {"b": gen.randn("b", (cout,), 0.1), "gamma": gen.rand("gamma", (cout,), 0.5, 1.5) * sign,
              "beta": gen.randn("beta", (cout,), 0.2), "mean": gen.randn("mean", (cout,), 0.3),
              "var": gen.rand("var", (cout,), 0.5, 1.5)}
        for name, c, val in spec["p_poison"]:
            pv[name][c] = float(val)
        pv = {k: _place(v, dtype, spec["p_layout"]) for k, v in pv.items()}
        b = pv["b"] if spec["bias"] else None
        bn = [pv["gamma"], pv["beta"], pv["mean"], pv["var"]]
        kwargs = dict(stride=tuple(spec["stride"]), padding=tuple(spec["padding"]),
                      dilation=tuple(spec["dilation"]), groups=g, eps=spec["eps"])
        r = None
        if spec["residual"]:
            r = _place(_poison(gen.randn("res", (N, cout, spec["ho"], spec["wo"])), spec["r_poison"]), dtype,
                       spec["r_layout"])
        if op == "conv_bias_act":
            del kwargs["eps"]
            kwargs["act"] = spec["act"]
            return op, (x, w, b, r), kwargs
        if op == "conv_bn_gelu":
            kwargs["approximate"] = spec["approximate"]
        if spec["folded"]:
            kwargs["folded"] = _K().fold_bn(w, b, *bn, spec["eps"])
        args = [x, w, b, *bn]
        if op == "conv_bn_add":
            args.append(r)
        return op, tuple(args), kwargs
    if op == "attention":
        B, H, Lq, Lk, D, Dv = (spec[k] for k in ("B", "H", "Lq", "Lk", "D", "Dv"))
        vals = {"q": gen.randn("q", (B, H, Lq, D)), "k": gen.randn("k", (B, H, Lk, D)),
                "v": gen.randn("v", (B, H, Lk, Dv))}
        for t in ("q", "k", "v"):
            if spec[f"{t}_layout"] == "expand_h" and vals[t].shape[1]:
                vals[t] = vals[t][:, :1].expand(vals[t].shape).clone()
        for (t, *idx), val in spec["poison"]:
            vals[t][tuple(idx)] = float(val)
        q, k, v = (_place(vals[t], dtype, spec[f"{t}_layout"]) for t in ("q", "k", "v"))
        mask = None
        if spec["mask"] is not None:
            ms = tuple(spec["mask_shape"])
            keep = gen.rand("mask", ms) > 0.3
            if ms[-1] > 0 and spec["dead_rows"] == 0 and ms[-1] != 1:
                keep[..., 0] = True  # at least one key per row, unless the kind wants dead rows
            if spec["dead_rows"]:
                rows = gen.rand("dead", ms[:-1]) < 0.3
                flat = rows.reshape(-1)
                if flat.numel():
                    flat[0] = True
                keep &= ~rows.unsqueeze(-1)
            for (t, *idx), _ in spec["poison"]:  # never mask a poisoned key out (but nan_k_masked)
                if spec["kind"] == "nan_k_masked":
                    keep = keep.clone()
                    keep[idx[0], idx[1], :, idx[2]] = False
                elif t in ("k", "v") and ms[-1] != 1:
                    kk = keep.expand(B, H, Lq, Lk) if len(ms) == 4 else keep.expand(Lq, Lk)
                    keep = kk.clone()
                    if len(ms) == 4:
                        keep[idx[0], idx[1], :, idx[2]] = True
                    else:
                        keep[:, idx[2]] = True
            if spec["mask"] == "bool":
                mask = keep
            else:
                neg = float(spec["neg"])
                mdt = dtype if spec["mask_dtype"] == "x" else torch.float32
                mask = torch.where(keep, gen.randn("madd", keep.shape, 0.5), neg).to(mdt)
            ml = spec.get("mask_layout", "contig")
            if ml == "expand":  # stride 0 along the broadcast dims, full (B, H, Lq, Lk) shape
                mask = mask.expand(B, H, Lq, Lk)
            elif ml != "contig" and mask.dim() >= 2:
                mask = _place(mask, mask.dtype, ml)
        return op, (q, k, v, mask), ({"scale": spec["scale"]} if spec["scale"] is not None else {})
    if op in ("linear_gelu", "linear_add"):
        lead, K_, N_ = tuple(spec["lead"]), spec["K"], spec["N"]
        xv = _expand_values(_poison(gen.randn("x", (*lead, K_)), spec["poison"]), spec["x_layout"])
        x = _place(xv, dtype, spec["x_layout"])
        w = _place(_poison(gen.randn("w", (N_, K_), K_ ** -0.5), spec.get("w_poison", [])), dtype, spec["w_layout"])
        b = _place(gen.randn("b", (N_,), 0.3), dtype, spec.get("p_layout", "contig")) if spec["bias"] else None
        if op == "linear_gelu":
            return op, (x, w, b), {"approximate": spec["approximate"]}
        r = _place(_poison(gen.randn("res", (*lead, N_)), spec["r_poison"]), dtype, spec["r_layout"])
        return op, (x, w, b, r), {}
    if op in ("layer_norm", "add_layer_norm"):
        lead, C = tuple(spec["lead"]), spec["C"]
        xv = _poison(gen.randn("x", (*lead, C), _spread(spec, dt), spec["offset"]), spec["poison"])
        x = _place(_expand_values(xv, spec["x_layout"]), dtype, spec["x_layout"])
        pdt = dtype if spec["param_dtype"] == "x" else torch.float32
        w, b = _norm_params(gen, spec, C, pdt)
        if op == "layer_norm":
            return op, (x, w, b), {"eps": spec["eps"]}
        rv = _poison(gen.randn("res", (*lead, C), _spread(spec, dt)), spec["r_poison"])
        r = _place(rv, dtype, spec["r_layout"])
        return op, (x, r, w, b), {"eps": spec["eps"]}
    # group_norm_silu
    N, C, G, spatial = spec["N"], spec["C"], spec["G"], tuple(spec["spatial"])
    xv = _poison(gen.randn("x", (N, C, *spatial), _spread(spec, dt), spec["offset"]), spec["poison"])
    lay = spec["x_layout"]
    if lay == "cl" and len(spatial) != 2:
        lay = "contig"
    x = _place(_expand_values(xv, lay), dtype, lay)
    pdt = dtype if spec["param_dtype"] == "x" else torch.float32
    fdt = dtype if spec["film_dtype"] == "x" else torch.float32
    w, b = _norm_params(gen, spec, C, pdt)
    film = {}
    for name in ("scale", "shift"):
        if spec[name]:
            lay = spec.get("film_layout", "contig")
            v = _expand_values(gen.randn(name, (N, C), 0.3), lay)
            for pn, idx, val in spec.get("p_poison", []):
                if pn == name:
                    v[tuple(idx)] = float(val)
            film[name] = _place(v, fdt, lay)
    sc, sh = film.get("scale"), film.get("shift")
    return op, (x, G, w, b), {"eps": spec["eps"], "scale": sc, "shift": sh}


# ---------------------------------------------------------------------------------------
# The float64 reference: the documented math, written with plain tensor ops
# ---------------------------------------------------------------------------------------
def _d(t):
    return None if t is None else t.detach().to(_torch().float64)


def _gelu64(y, approximate):
    torch = _torch()
    if approximate == "tanh":
        return 0.5 * y * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * y * y * y)))
    return 0.5 * y * (1.0 + torch.erf(y / math.sqrt(2.0)))


def _silu64(y):
    return y / (1.0 + _torch().exp(-y))


def _conv64(x, w, b, stride, padding, dilation, groups):
    """conv2d in float64 as a sum over taps of per-group channel contractions."""
    torch = _torch()
    N, C, H, W = x.shape
    cout, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = torch.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=torch.float64)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    cog = cout // groups
    y = torch.zeros((N, cout, ho, wo), dtype=torch.float64)
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            for g in range(groups):
                y[:, g * cog:(g + 1) * cog] += torch.einsum(
                    "nchw,oc->nohw", tap[:, g * cg:(g + 1) * cg], w[g * cog:(g + 1) * cog, :, i, j])
    if b is not None:
        y = y + b.view(1, -1, 1, 1)
    return y


def ref_conv_bias_act(x, w, b, residual=None, *, stride, padding, dilation, groups, act):
    """act(conv2d(x, w, b) + residual) in float64; lenient where the pre-activation is
    -inf (every activation here is -inf * 0 there)."""
    torch = _torch()
    x, w, b, residual = map(_d, (x, w, b, residual))
    pre = _conv64(x, w, b, stride, padding, dilation, groups)
    if residual is not None:
        pre = pre + residual
    if act == "none":
        return pre, torch.zeros_like(pre, dtype=torch.bool)
    out = _silu64(pre) if act == "silu" else _gelu64(pre, "tanh" if act == "gelu_tanh" else "none")
    return out, torch.isneginf(pre)


def ref_conv(op, x, w, b, gamma, beta, mean, var, residual=None, *, stride, padding, dilation, groups, eps,
             approximate="none", folded=None):
    """conv2d (:func:`_conv64`), then BN by hand."""
    torch = _torch()
    x, w, b, gamma, beta, mean, var, residual = map(_d, (x, w, b, gamma, beta, mean, var, residual))
    y = _conv64(x, w, b, stride, padding, dilation, groups)
    pre = (y - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + eps) * gamma.view(1, -1, 1, 1) \
        + beta.view(1, -1, 1, 1)
    if residual is not None:
        pre = pre + residual
    if op == "conv_bn_gelu":
        return _gelu64(pre, approximate), torch.isneginf(pre)
    return pre, torch.zeros_like(pre, dtype=torch.bool)


def ref_attention(q, k, v, attn_mask=None, scale=None):
    """softmax(q k^T * scale + mask) v; a row whose every score is -inf gives 0."""
    torch = _torch()
    q, k, v = _d(q), _d(k), _d(v)
    B, H, Lq, D = q.shape
    Lk, Dv = k.shape[2], v.shape[3]
    scale = D ** -0.5 if scale is None else scale
    if Lk == 0 or Lq == 0 or B == 0:
        out = torch.zeros((B, H, Lq, Dv), dtype=torch.float64)
        return out, torch.zeros_like(out, dtype=torch.bool)
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if attn_mask is not None:
        m = attn_mask.detach().expand(B, H, Lq, Lk)
        if m.dtype == torch.bool:
            s = torch.where(m, s, torch.tensor(float("-inf"), dtype=torch.float64))
        else:
            s = s + m.double()
    dead = (s == float("-inf")).all(-1, keepdim=True)
    s = torch.where(dead, torch.zeros_like(s), s)
    mx = s.amax(-1, keepdim=True)
    e = torch.exp(s - mx)
    p = e / e.sum(-1, keepdim=True)
    p = torch.where(dead, torch.zeros_like(p), p)
    out = torch.einsum("bhqk,bhkd->bhqd", p, v)
    return out, torch.zeros_like(out, dtype=torch.bool)


def ref_linear(op, x, w, b, residual=None, approximate="none"):
    torch = _torch()
    x, w, b, residual = map(_d, (x, w, b, residual))
    y = torch.einsum("...k,nk->...n", x, w)
    if b is not None:
        y = y + b
    if op == "linear_gelu":
        return _gelu64(y, approximate), torch.isneginf(y)
    return residual + y, torch.zeros_like(y, dtype=torch.bool)


def _ln64(s, w, b, eps):
    torch = _torch()
    mean = s.sum(-1, keepdim=True) / s.shape[-1]
    xc = s - mean
    var = (xc * xc).sum(-1, keepdim=True) / s.shape[-1]
    y = xc / torch.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def _conditioning(xr, eps, gain):
    """max over the normalised groups (last dim of xr) of max|x| / sqrt(var + eps), times
    gain: how much a relative rounding of x or of the mean (the statistics' precision)
    moves the output. x = 50 + 0.01 * noise gives 5000: rounding the mean to float32 alone
    then moves outputs by ~1e-4 in any impl."""
    torch = _torch()
    if xr.numel() == 0:
        return 0.0
    mean = xr.mean(-1, keepdim=True)
    var = ((xr - mean) ** 2).mean(-1)
    c = xr.abs().amax(-1) / torch.sqrt(var + eps)
    c = c[torch.isfinite(c)]
    return float(c.max()) * gain if c.numel() else 0.0


def _gain(*ts):
    g = 1.0
    for t in ts:
        if t is not None and t.numel():
            f = t[_torch().isfinite(t)]
            g *= float(f.abs().max()) if f.numel() else 1.0
    return g


_F32_EPS = 2.0 ** -23


def ref_layer_norm(x, w, b, eps, dtype=None):
    x, w = _d(x), _d(w)
    y = _ln64(x, w, _d(b), eps)
    cond = _F32_EPS * _conditioning(x, eps, _gain(w))
    return y, _torch().zeros_like(y, dtype=_torch().bool), cond


def ref_add_layer_norm(x, r, w, b, eps, dtype):
    """The sum is returned in x's dtype, so the normalised output of any impl that
    normalises the rounded sum (eager does) carries that rounding times the conditioning."""
    torch = _torch()
    s = _d(x) + _d(r)
    w = _d(w)
    y = _ln64(s, w, _d(b), eps)
    z = torch.zeros_like(y, dtype=torch.bool)
    cond = torch.finfo(dtype).eps * _conditioning(s, eps, _gain(w))
    return (s, y), (z, z), (0.0, cond)


def ref_group_norm_silu(x, G, w, b, eps, scale, shift):
    torch = _torch()
    x, w, b, scale, shift = map(_d, (x, w, b, scale, shift))
    N, C = x.shape[:2]
    sp = x.shape[2:]
    xr = x.reshape(N, G, (C // G) * math.prod(sp))
    cnt = xr.shape[-1]
    mean = xr.sum(-1, keepdim=True) / cnt
    xc = xr - mean
    var = (xc * xc).sum(-1, keepdim=True) / cnt
    y = (xc / torch.sqrt(var + eps)).reshape(x.shape)
    ext = (1,) * len(sp)
    cond = _F32_EPS * _conditioning(xr, eps, 1.1 * _gain(w) * _gain(None if scale is None else 1.0 + scale))
    if w is not None:
        y = y * w.view(1, C, *ext)
    if b is not None:
        y = y + b.view(1, C, *ext)
    if scale is not None:
        y = y * (1.0 + scale.view(N, C, *ext))
    if shift is not None:
        y = y + shift.view(N, C, *ext)
    return _silu64(y), torch.isneginf(y), cond


def reference(op, args, kwargs, dtype):
    """(outputs, lenient masks, conditioning allowances): each a tuple, one entry per
    output of the op. The allowance is an absolute error any impl may have from rounding
    its inputs or statistics where the output is ill-conditioned (norms of x = 50 + small)."""
    if op == "conv_bias_act":
        out, len_ = ref_conv_bias_act(*args, **kwargs)
    elif op in CONV_OPS:
        out, len_ = ref_conv(op, *args, **kwargs)
    elif op == "attention":
        out, len_ = ref_attention(*args, **kwargs)
    elif op in ("linear_gelu", "linear_add"):
        out, len_ = ref_linear(op, *args, **kwargs)
    elif op == "layer_norm":
        out, len_, cond = ref_layer_norm(*args, **kwargs)
        return (out,), (len_,), (cond,)
    elif op == "add_layer_norm":
        return ref_add_layer_norm(*args, **kwargs, dtype=dtype)
    else:
        x, G, w, b = args
        out, len_, cond = ref_group_norm_silu(x, G, w, b, kwargs["eps"], kwargs["scale"], kwargs["shift"])
        return (out,), (len_,), (cond,)
    return (out,), (len_,), (0.0,)


# ---------------------------------------------------------------------------------------
# Running and checking one case
# ---------------------------------------------------------------------------------------
def _tensors(args, kwargs):
    torch = _torch()
    out = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (tuple, list)):
            out += [t for t in a if isinstance(t, torch.Tensor)]
    return out


def _same(a, b):
    torch = _torch()
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = a.double(), b.double()
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


def _call(op, args, kwargs):
    return getattr(_K(), op)(*args, **kwargs)


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _first(mask):
    idx = mask.nonzero()
    return tuple(idx[0].tolist()) if len(idx) else None


def _sanity(dtype, maxref):
    from ascan_kernels.testing import TOLERANCES
    atol, rtol = TOLERANCES[dtype]
    return 4 * (atol + rtol * maxref)


def compare(name, got, want, lenient, eager, dtype, cond=0.0):
    """Problems (strings) of one output: shape, dtype, NaN/Inf positions, values."""
    torch = _torch()
    if not isinstance(got, torch.Tensor):
        return [f"{name}: returned {type(got).__name__}, not a tensor"], {}
    if tuple(got.shape) != tuple(want.shape):
        return [f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"], {}
    probs = []
    if got.dtype != eager.dtype:
        probs.append(f"{name}: dtype {got.dtype}, eager returns {eager.dtype}")
    g, e = got.detach().double(), eager.detach().double()
    if tuple(e.shape) != tuple(want.shape):
        probs.append(f"{name}: eager shape {tuple(e.shape)} != expected {tuple(want.shape)}")
        return probs, {}
    w_nan, g_nan = torch.isnan(want), torch.isnan(g)
    strict = ~lenient
    checks = [
        ("NaN where the reference is not", g_nan & ~w_nan & strict),
        ("not NaN where the reference is NaN", w_nan & ~g_nan & strict),
        ("not +inf where the reference is +inf", (want == math.inf) & (g != math.inf) & strict),
        ("not -inf where the reference is -inf", (want == -math.inf) & (g != -math.inf) & strict),
        ("infinite where the reference is finite", torch.isinf(g) & torch.isfinite(want) & strict),
        ("neither NaN nor 0 where -inf met GELU/SiLU or the doc allows 0", lenient & ~g_nan & (g != 0)),
    ]
    for what, bad in checks:
        cnt = int(bad.sum())
        if cnt:
            i = _first(bad)
            probs.append(f"{name}: {cnt} of {want.numel()} outputs {what} (first at {i}: got {g[i].item():.6g}, "
                         f"reference {want[i].item():.6g}, eager {e[i].item():.6g})")
    fin = torch.isfinite(want) & strict & torch.isfinite(g)
    stats = {}
    if fin.any():
        wf = want[fin]
        maxref = float(wf.abs().max())
        err_t = (g - want).abs().where(fin, torch.zeros_like(g))
        err = float(err_t.max())
        efin = fin & torch.isfinite(e)
        base = float((e - want).abs().where(efin, torch.zeros_like(e)).max()) if efin.any() else 0.0
        sanity = _sanity(dtype, maxref)
        # the floor: a few float32 ulps (summation order), one low-precision ulp (rounding)
        floor = (8 if dtype == torch.float32 else 1) * torch.finfo(dtype).eps * max(1.0, maxref) + cond
        bound = 2.0 * min(base, sanity) + floor
        stats = dict(err=err, base=base, bound=bound, maxref=maxref)
        if not err <= bound:
            i = _first(err_t == err)
            probs.append(f"{name}: max error {err:.3e} > 2 x eager error {min(base, sanity):.3e} + floor "
                         f"{floor:.1e}{' (conditioning %.1e)' % cond if cond else ''} (at {i}: got {g[i].item():.6g}, reference {want[i].item():.6g}, "
                         f"eager {e[i].item():.6g}; max |ref| {maxref:.3g})")
    return probs, stats


def run_case(cid: str, seed: int = SEED) -> dict:
    """Run one case in this process; returns a JSON-able dict with ``status`` "pass",
    "fail" or "declined" and ``msg``."""
    torch = _torch()
    K = _K()
    t0 = time.perf_counter()
    op, impl, dt, kind, n = parse_id(cid)
    spec = spec_of(op, kind, n, seed)
    dtype = _dtype(dt)
    res = {"id": cid, "impl_ran": None}

    def done(status, msg="", **kw):
        res.update(status=status, msg=msg, seconds=round(time.perf_counter() - t0, 3), **kw)
        return res

    fname, args, kwargs = build(spec, dt)
    want, lenient, conds = reference(op, args, kwargs, dtype)
    with call_context(spec, dt):
        try:
            with K.use(**{op: "eager"}):
                eager = _as_tuple(_call(op, *build(spec, dt)[1:]))
        except Exception as ex:
            return done("fail", f"the eager reference raised {type(ex).__name__}: {ex}")
        try:
            with K.trace() as tr:
                if impl == "auto":
                    got = _call(op, args, kwargs)
                else:
                    with K.use(**{op: impl}):
                        got = _call(op, args, kwargs)
        except K.KernelUnavailableError as ex:
            reason = str(ex).splitlines()[0]
            if impl == "auto":
                return done("fail", f"auto selection declined: {reason}")
            return done("declined", reason)
        except Exception as ex:
            tb = traceback.format_exc(limit=-3)
            return done("fail", f"{impl} raised {type(ex).__name__}: {ex}\n{tb}")
    ran = tr.impls(op)
    res["impl_ran"] = ran[-1] if ran else None
    got = _as_tuple(got)
    probs = []
    if len(got) != len(want):
        return done("fail", f"{len(got)} outputs, expected {len(want)}")
    if res["impl_ran"] == "sdpa" and torch.isnan(args[0]).any():
        # documented: CPU sdpa returns 0 for a query row containing a NaN
        rows = torch.isnan(args[0]).any(-1, keepdim=True)
        lenient = (lenient[0] | rows.expand_as(lenient[0]),)
    if res["impl_ran"] == "sdpa" and torch.isnan(args[1]).any():
        # documented: with CPU sdpa a NaN key hidden by the mask still reaches its (batch, head)
        heads = torch.isnan(args[1]).flatten(2).any(-1)[:, :, None, None]
        lenient = (lenient[0] | heads.expand_as(lenient[0]),)
    stats = {}
    for i, (g, w, l, e, c) in enumerate(zip(got, want, lenient, eager, conds)):
        name = f"output {i}" if len(want) > 1 else "output"
        p, s = compare(name, g, w, l, e, dtype, c)
        probs += p
        stats.update({f"{k}{i if len(want) > 1 else ''}": v for k, v in s.items()})
    fresh = _tensors(*build(spec, dt)[1:])
    for j, (a, b) in enumerate(zip(_tensors(args, kwargs), fresh)):
        if not _same(a, b):
            probs.append(f"input tensor #{j} was modified by the call")
    if probs:
        return done("fail", "; ".join(probs), **stats)
    return done("pass", **stats)


def describe(cid: str, seed: int = SEED) -> str:
    op, impl, dt, kind, n = parse_id(cid)
    sp = dict(spec_of(op, kind, n, seed))
    sp.pop("op"), sp.pop("kind")
    return json.dumps(sp, default=str)


# ---------------------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------------------
def worker() -> None:
    """Read case ids from stdin (one a line); write one JSON result line per case to the
    original stdout, flushed. Anything else that writes to fd 1 goes to stderr."""
    import faulthandler

    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    faulthandler.enable(file=sys.stderr, all_threads=False)
    import torch  # noqa: F401
    import ascan_kernels  # noqa: F401  (import errors surface before the first case)
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        cid = line.strip()
        if not cid:
            continue
        print(f"[fuzz worker] running {cid}", file=sys.stderr, flush=True)
        if cid == SELFTEST_SEGV:
            import ctypes
            ctypes.string_at(0)  # a real SIGSEGV
        try:
            res = run_case(cid)
        except BaseException as ex:  # a harness error is this case's failure, not the worker's end
            res = {"id": cid, "status": "fail", "msg": f"harness error {type(ex).__name__}: {ex}\n"
                   + traceback.format_exc(limit=-4)}
        out.write(json.dumps(res) + "\n")
        out.flush()


def main(argv) -> int:
    if "--worker" in argv:
        worker()
        return 0
    if "--list" in argv:
        ids = default_cases() if "--default" in argv else all_cases()
        print("\n".join(ids))
        return 0
    if "--run" in argv:
        rc = 0
        for cid in argv[argv.index("--run") + 1:]:
            r = run_case(cid)
            print(json.dumps(r))
            print("  spec:", describe(cid))
            rc |= r["status"] == "fail"
        return rc
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
