import os

import pytest
import torch

# Without a GPU the Triton kernels are checked under Triton's CPU interpreter, which
# must be switched on before anything imports triton. pytest and torch do not; ascan_kernels
# does, on import, so this file imports it only inside functions, after this has run.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_report_header(config):
    import ascan_kernels as K
    from ascan_kernels._ext import load_extension

    ext, why = load_extension()
    lines = [f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}",
             f"ascan_kernels._C: {'built' if ext is not None else why}"]
    for op, impls in K.available().items():
        lines.append(f"  {op}: " + ", ".join(f"{i}={s}" for i, s in impls.items()))
    return lines
