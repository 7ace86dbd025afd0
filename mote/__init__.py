"""Mote's tools for CPython: the `mote` command line, importers, quantizer, perplexity, pulls, benchmarks.

`engine/` is the runtime (what the browser wheel ships: numpy + stdlib only); everything here runs
only in CPython, on top of it. Nothing in `engine/` imports this package.
"""
