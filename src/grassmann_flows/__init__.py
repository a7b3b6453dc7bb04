"""grassmann-flows: a reproduction harness for arXiv 2512.19428 (Grassmann flows)."""

__version__ = "0.1.0"
