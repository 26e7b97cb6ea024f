"""Benchmarks as importable code.

`codream bench ...` and the scripts under benchmarks/ share this one implementation.
"""
