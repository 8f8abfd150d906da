"""Tools over the kernels, run by developers and CI, never by the ops: ahead-of-time Triton
compilation with resource checks (``aot``), the CUDA kernels' resource usage from the built
binary (``cuda_resources``), the resource + roofline report (``report``). They may import
``ascan`` (the report traces whole models); nothing in ``ascan_kernels`` imports them.

    python -m ascan_kernels.tools.aot             # compile every Triton kernel for sm_80/sm_90
    python -m ascan_kernels.tools.cuda_resources  # registers / shared / local memory of the CUDA kernels
    python -m ascan_kernels.tools.report          # both, plus the H100 rooflines of ascan_t and a UNet
"""
