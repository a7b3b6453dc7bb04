"""Run plumbing shared by the training and evaluation entry points."""
