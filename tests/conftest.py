"""Session-wide test setup.

Without a GPU, Triton kernels run through Triton's interpreter. The switch is read
when kernels are first decorated, so it must be set before any test module imports
Triton (test order must not matter).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tiny tensors: extra threads only spin on a busy
    shared CPU. Restored for the other modules. Use with
    `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
