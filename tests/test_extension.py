"""The compiled extension ascan_kernels._C: build metadata, the C++ add_layer_norm kernel, bad input."""
import pytest
import torch
import torch.nn.functional as F

from ascan_kernels._ext import has_cuda_kernels, load_extension
from ascan_kernels.testing import assert_close, assert_error_within

EXT, WHY = load_extension()
pytestmark = pytest.mark.skipif(EXT is None, reason=f"ascan_kernels._C unavailable: {WHY}")


def op(*args):
    return torch.ops.ascan_C.add_layer_norm(*args)


def test_build_info_matches_running_torch():
    info = EXT.build_info()
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert info["openmp"] is True
    assert info["add_layer_norm_isa"] in ("AVX512", "AVX2", "DEFAULT")
    assert has_cuda_kernels() == info["with_cuda"]
    from ascan_kernels._build_info import BUILD_INFO

    assert BUILD_INFO["torch_version"] == torch.__version__


SHAPES = [(3, 37, 200), (1, 1, 1), (5, 768), (2, 49, 512), (7, 33), (4, 16)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("wdtype", ["fp32", "same"])
def test_fp32_matches_eager(shape, wdtype):
    x, r = torch.randn(*shape) * 2 + 0.5, torch.randn(*shape)
    w, b = torch.randn(shape[-1]), torch.randn(shape[-1])
    s, out = op(x, r, w, b, 1e-5)
    assert_close(s, x + r)
    assert_close(out, F.layer_norm(x + r, (shape[-1],), w, b, 1e-5), scale=0.1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("wdtype", [torch.float32, None])
def test_bf16_within_twice_eager_error(shape, wdtype):
    dtype = torch.bfloat16
    x, r = torch.randn(*shape).to(dtype), torch.randn(*shape).to(dtype)
    w, b = torch.randn(shape[-1]).to(wdtype or dtype), torch.randn(shape[-1]).to(wdtype or dtype)
    s, out = op(x, r, w, b, 1e-5)
    assert s.dtype == out.dtype == dtype
    assert torch.equal(s, x + r)  # the sum is rounded exactly like eager's
    ref = F.layer_norm(x.float() + r.float(), (shape[-1],), w.float(), b.float(), 1e-5)
    eager = F.layer_norm(x + r, (shape[-1],), w, b, 1e-5)
    assert_error_within(out, eager, ref, factor=2.0, floor=1e-2)


def test_outputs_fully_written_and_deterministic():
    x, r = torch.randn(6, 130), torch.randn(6, 130)
    w, b = torch.ones(130), torch.zeros(130)
    s1, o1 = op(x, r, w, b, 1e-5)
    s2, o2 = op(x, r, w, b, 1e-5)
    assert torch.isfinite(o1).all() and torch.equal(o1, o2) and torch.equal(s1, s2)
    assert_close(o1.mean(-1), torch.zeros(6), scale=10)
    assert_close(o1.var(-1, unbiased=False), torch.ones(6), scale=10)


def test_empty_rows():
    x = torch.randn(0, 5, 8)
    s, out = op(x, x, torch.ones(8), torch.zeros(8), 1e-5)
    assert s.shape == out.shape == (0, 5, 8)


def test_nan_propagates_per_row():
    x, r = torch.randn(3, 16), torch.randn(3, 16)
    x[1, 4] = float("nan")
    _, out = op(x, r, torch.ones(16), torch.zeros(16), 1e-5)
    assert out[1].isnan().all() and torch.isfinite(out[[0, 2]]).all()


BAD = [
    (lambda x: op(x.int(), x.int(), torch.ones(8), torch.zeros(8), 1e-5), "must be float32 or bfloat16"),
    (lambda x: op(x.half(), x.half(), torch.ones(8), torch.zeros(8), 1e-5), "must be float32 or bfloat16"),
    (lambda x: op(x, x[:, :7].contiguous(), torch.ones(8), torch.zeros(8), 1e-5), "residual shape"),
    (lambda x: op(x, x.double(), torch.ones(8), torch.zeros(8), 1e-5), "residual dtype"),
    (lambda x: op(x, x, torch.ones(7), torch.zeros(8), 1e-5), r"weight and bias must have shape \(8\)"),
    (lambda x: op(x, x, torch.ones(8).double(), torch.zeros(8).double(), 1e-5), "weight/bias must both be float32"),
    (lambda x: op(x.t(), x.t(), torch.ones(4), torch.zeros(4), 1e-5), "must be contiguous"),
    (lambda x: op(x[:, :0], x[:, :0], torch.ones(0), torch.zeros(0), 1e-5), "normalised \\(last\\) dim is empty"),
    (lambda x: op(x, x, torch.ones(8), torch.zeros(8), -1.0), "eps must be >= 0"),
]


@pytest.mark.parametrize("fn,msg", BAD)
def test_bad_input_names_the_op(fn, msg):
    with pytest.raises(RuntimeError, match=f"ascan add_layer_norm: .*{msg}"):
        fn(torch.randn(4, 8))


def test_opcheck():
    x, r = torch.randn(3, 5, 24), torch.randn(3, 5, 24)
    w, b = torch.randn(24), torch.randn(24)
    torch.library.opcheck(torch.ops.ascan_C.add_layer_norm.default, (x, r, w, b, 1e-5))
    torch.library.opcheck(torch.ops.ascan_C.add_layer_norm.default,
                          (x.requires_grad_(), r.requires_grad_(), w.requires_grad_(), b, 1e-5))
    torch.library.opcheck(torch.ops.ascan_C.add_layer_norm.default,
                          (x.detach().bfloat16(), r.detach().bfloat16(), w.detach(), b, 1e-5))
