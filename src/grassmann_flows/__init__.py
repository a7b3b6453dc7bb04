"""grassmann-flows: a reproduction harness for arXiv 2512.19428 (Grassmann flows)."""

from .hf import install as _install_hf

__version__ = "0.1.0"

_install_hf()  # registers both models with transformers' Auto classes when those are imported
