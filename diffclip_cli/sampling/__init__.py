"""Sampling: normalisation statistics, k-shot splits, unlabelled windows, windows and tiles."""
