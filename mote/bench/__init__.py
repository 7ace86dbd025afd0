"""Benchmarks, one home per kind: kernels (`kernels.py`), native CPython (`native.py`), browser (`browser.py`)."""
