"""Session-wide test setup.

Without a GPU, Triton kernels run through Triton's interpreter. The switch is read
when kernels are first decorated, so it must be set before any test module imports
Triton (test order must not matter).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
