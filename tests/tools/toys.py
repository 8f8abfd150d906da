"""Toy kernels that the AOT checker must flag (run without TRITON_INTERPRET, in a subprocess).

Prints one line per toy: ``<toy> <problems joined by ' | '>``.
"""
import triton
import triton.language as tl

from ascan_kernels.backends.triton import KernelSpec
from ascan_kernels.tools import aot


@triton.jit
def _copy(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


@triton.jit
def _matmul(a_ptr, b_ptr, c_ptr, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm, rn, rk = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BK)
    acc = tl.zeros((BM, BN), tl.float32)
    for k in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * K + (k + rk)[None, :])
        b = tl.load(b_ptr + (k + rk)[:, None] * BN + rn[None, :])
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)


def main():
    copy_sig = {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}
    mm_sig = {"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32", "K": "i32",
              "BM": "constexpr", "BN": "constexpr", "BK": "constexpr"}
    toys = {
        # claims tl.dot but has none: must be flagged on both targets
        "no_dot": (KernelSpec("no_dot", _copy, copy_sig, {}, (triton.Config({"BLOCK": 256}, num_warps=4),),
                              uses_dot=True), 80),
        # an fp32 256x256 tile with 4 stages of 256x64 operands cannot fit sm_80's shared memory
        "smem": (KernelSpec("smem", _matmul, mm_sig, {},
                            (triton.Config({"BM": 256, "BN": 256, "BK": 64}, num_warps=4, num_stages=4),),
                            uses_dot=True), 80),
        # a clean one: the checker must not cry wolf
        "clean": (KernelSpec("clean", _matmul, mm_sig, {},
                             (triton.Config({"BM": 64, "BN": 64, "BK": 32}, num_warps=4, num_stages=2),),
                             uses_dot=True), 80),
    }
    for name, (spec, cc) in toys.items():
        r = aot.compile_spec(spec, spec.configs[0], cc)
        print(name, " | ".join(r.problems) if r.problems else "ok", f"regs={r.registers} smem={r.shared}")


if __name__ == "__main__":
    main()
