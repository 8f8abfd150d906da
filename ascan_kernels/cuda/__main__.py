"""``python -m ascan_kernels.cuda``: the CUDA kernels' registers / shared / local memory per arch."""
from .resources import table

print(table())
