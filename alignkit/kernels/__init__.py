"""Triton kernels with pure-torch references, installed as ``alignkit.kernels``.

Each kernel module holds the kernel, its launcher and a pure-torch reference; kernels import only
torch and triton. Tests run them on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``).
"""
