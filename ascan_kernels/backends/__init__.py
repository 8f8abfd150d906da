"""Runtime probes of the backends the ops' impls run on: what this process can use, and why not.

Probes only: no op is defined here. ``onednn`` (PyTorch's oneDNN fused primitives on the
CPU), ``triton`` (the Triton runtime, the interpreter, the AOT kernel description) and
``cuda`` (the extension's CUDA kernels, the device and its architecture).
"""
