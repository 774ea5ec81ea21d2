"""diffclip: few-shot, language-driven land-cover mapping from hyperspectral and LiDAR rasters.

The pipeline reads as the package layout: :mod:`diffclip_cli.io` (rasters, labels,
co-registration) -> :mod:`diffclip_cli.sampling` (statistics, shots, windows, tiles) ->
:mod:`diffclip_cli.model` (the DiffCLIP network and model files) -> :mod:`diffclip_cli.train`
(masked-diffusion pretraining, few-shot fine-tuning) -> :mod:`diffclip_cli.infer` (whole-scene
maps) -> :mod:`diffclip_cli.report` (accuracy reports). :mod:`diffclip_cli.cli` is a thin
command-line layer over these.
"""

__version__ = "0.1.0"
