"""``python -m ascan_kernels.tools.cuda_resources``: the CUDA kernels' registers, shared and
local memory per architecture, read from the built binary with cuobjdump (no GPU needed),
and the parser of cuobjdump's output."""
import pytest

from ascan_kernels._ext import _build_info, has_cuda_kernels, load_extension
from ascan_kernels.tools import cuda_resources

EXT, WHY = load_extension()
needs_cuda_build = pytest.mark.skipif(not has_cuda_kernels(),
                                      reason=f"ascan_kernels._C was built without CUDA kernels: {WHY or _build_info()}")


@needs_cuda_build
def test_resource_usage_no_spills():
    try:
        usage = cuda_resources.resource_usage()
    except RuntimeError as e:
        pytest.skip(str(e))
    archs = {u.arch for u in usage}
    wanted = {f"sm_{a.replace('.', '').replace('+PTX', '')}" for a in _build_info()["cuda_arch_list"].split(";")}
    assert wanted <= archs, (wanted, archs)
    names = " ".join(u.kernel for u in usage)
    for k in ("affine_act_kernel", "group_norm_stats_kernel", "group_norm_coeffs_kernel", "layer_norm_fwd_kernel",
              "layer_norm_bwd_kernel"):
        assert k in names
    spills = [(u.arch, u.kernel, u.local) for u in usage if u.local or u.stack]
    assert not spills, spills
    assert all(u.shared <= 48 * 1024 and 0 < u.registers <= 255 for u in usage)
    assert "layer_norm_fwd_kernel" in cuda_resources.table(usage)


def test_resource_usage_parser():
    text = """
Fatbin elf code:
================
arch = sm_90
Resource usage:
 Common:
  GLOBAL:0
 Function _Z3fooPf:
  REG:40 STACK:8 SHARED:1024 LOCAL:4 CONSTANT[0]:380 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    (u,) = cuda_resources.parse_resource_usage(text)
    assert (u.arch, u.mangled, u.registers, u.shared, u.local, u.stack) == ("sm_90", "_Z3fooPf", 40, 1024, 4, 8)
    assert cuda_resources.short_name("void ascan::cuda::(anonymous namespace)::k<float, 4>(ascan::P)") == "k<float, 4>"

