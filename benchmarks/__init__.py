"""Benchmarks: the paper's few-shot protocol, dataset readers, baselines, ablations, scenes.

A package of the source checkout, not of the installed ``diffclip`` (which never imports it);
the scripts next to it (``fewshot.py``, ``memory.py``, ...) run from the repository root.
"""
