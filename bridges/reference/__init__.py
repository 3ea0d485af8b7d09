"""Faithful PyTorch references of the upstream models (OpenLTM Timer-XL, STRIDE drafts and
speculative loop) and tiny random HF Chronos builders.

They define the upstream module and parameter names that the bridges target, and both the
parity tests and the benchmarks run them; torch is required to import them.
"""
