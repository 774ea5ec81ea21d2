"""diffclip: few-shot, language-driven land-cover mapping from hyperspectral and LiDAR rasters.

The pipeline reads as the package layout: :mod:`diffclip_cli.io` (rasters, labels,
co-registration, scenes as lazy xarray) -> :mod:`diffclip_cli.sampling` (statistics, shots,
windows, tiles) -> :mod:`diffclip_cli.model` (the DiffCLIP network and model files) ->
:mod:`diffclip_cli.train` (masked-diffusion pretraining, few-shot fine-tuning) ->
:mod:`diffclip_cli.infer` (the lazy tile graph, whole-scene maps) -> :mod:`diffclip_cli.report`
(accuracy reports). :mod:`diffclip_cli.cli` is a thin command-line layer over these.

On arrays (docs/api.md)::

    import diffclip_cli, rioxarray
    model = diffclip_cli.load_model("model.pt")
    hsi = rioxarray.open_rasterio("hsi.tif", chunks={"y": 512, "x": 512})
    classes = diffclip_cli.predict(model, hsi)     # lazy: a dask-backed DataArray
    classes.rio.to_raster("map.tif")

``load_model`` and ``predict`` are imported on first use, so ``import diffclip_cli`` stays
light (no torch, no xarray).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:  # the one place the version lives is pyproject.toml; this reads the installed metadata
    __version__ = version("diffclip")
except PackageNotFoundError:  # pragma: no cover - a bare source tree, never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "load_model", "predict"]

if TYPE_CHECKING:  # pragma: no cover
    from diffclip_cli.infer.predict import load_model, predict


def __getattr__(name: str) -> Any:
    if name in ("load_model", "predict"):
        from diffclip_cli.infer import predict as module

        return getattr(module, name)
    raise AttributeError(f"module 'diffclip_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "load_model", "predict"])
