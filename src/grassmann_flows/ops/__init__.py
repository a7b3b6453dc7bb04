"""Ops with several implementations side by side, one folder each.

`wedge_project/`: W (u ∧ w), the projection of the Grassmann mixer's Plücker features.
"""
