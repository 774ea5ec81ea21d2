"""Inference: class probabilities for windows and tiled whole-scene maps."""
