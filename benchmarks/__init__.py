"""Benchmarks: the paper's few-shot protocol, dataset readers and baselines."""
