"""Sampling: normalisation statistics, k-shot splits, unlabelled windows, windows and tiles."""

__all__ = ["PIXEL_CHUNK"]

#: Scattered pixels whose windows are read at once when scoring (the held-out score, the fast
#: path's teacher labels): memory follows it, and each read costs its blocks once. Here, not in
#: ``windows``, so that the time-budget code can size reads without importing the raster stack.
PIXEL_CHUNK = 4096
