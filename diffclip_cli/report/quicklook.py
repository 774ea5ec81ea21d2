"""Quicklook PNGs of class maps, for people: class colours, nodata white, a legend.

A georeferenced map also gets its coordinates, CRS and a scale bar.

Huge maps are read decimated (``out_shape``, so GDAL uses the map's overviews when it has
them): memory stays bounded by ``max_size`` squared whatever the map's size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError

from diffclip_cli.errors import InputError
from diffclip_cli.io.atomic import atomic_path, check_output
from diffclip_cli.io.classes import DEFAULT_PALETTE, ClassInfo, ClassTable

__all__ = ["MapFrame", "decimated_shape", "map_frame", "nice_length", "quicklook",
           "quicklook_figure", "read_decimated"]

#: Colour of map values that are no class of the table.
UNKNOWN_COLOR = (160, 160, 160)
_DPI = 100
_PAD = 10
# Room for the coordinates (left: rotated y tick labels; below: x tick labels, scale bar).
_COORD_LEFT = 28
_COORD_BELOW = 62


@dataclass(frozen=True)
class MapFrame:
    """Where a north-up map lies on the ground, for the quicklook's coordinates and scale.

    Attributes:
        left: x of the map's left edge, in CRS units.
        right: x of the right edge.
        bottom: y of the bottom edge.
        top: y of the top edge.
        crs: the CRS as people read it (``EPSG:32615``, or its name).
        metres_per_unit: ground metres per CRS unit along x (at the map's centre for a
            geographic CRS).
    """

    left: float
    right: float
    bottom: float
    top: float
    crs: str
    metres_per_unit: float


def map_frame(ds: Any) -> MapFrame | None:
    """The :class:`MapFrame` of an open raster; ``None`` without CRS or when rotated."""
    t, crs = ds.transform, ds.crs
    if crs is None or t.b != 0 or t.d != 0 or t.a == 0 or t.e == 0:
        return None
    b = ds.bounds
    if crs.is_geographic:
        lat = math.radians((b.bottom + b.top) / 2)
        per_unit = 111_320.0 * max(math.cos(lat), 1e-6)
    else:
        try:
            per_unit = float(crs.linear_units_factor[1])
        except Exception:  # units unknown to PROJ: no scale bar can be honest
            return None
    epsg = crs.to_epsg()
    name = f"EPSG:{epsg}" if epsg else (crs.to_dict().get("proj") or crs.to_string()[:40])
    return MapFrame(b.left, b.right, b.bottom, b.top, str(name), per_unit)


def nice_length(target: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above ``target`` (a scale bar's length)."""
    if target <= 0 or not math.isfinite(target):
        raise ValueError(f"a scale bar needs a positive length, got {target}")
    power = 10.0 ** math.floor(math.log10(target))
    return max(m * power for m in (1.0, 2.0, 5.0) if m * power <= target)


def decimated_shape(shape: tuple[int, int], max_size: int) -> tuple[int, int]:
    """``(rows, cols)`` scaled down so the longer side is at most ``max_size``.

    The aspect ratio is kept (to the nearest pixel); shapes that already fit are unchanged.
    """
    h, w = int(shape[0]), int(shape[1])
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    longest = max(h, w)
    if longest <= max_size:
        return (h, w)
    scale = longest / max_size
    return (max(1, min(max_size, round(h / scale))), max(1, min(max_size, round(w / scale))))


def read_decimated(
    path: str | os.PathLike[str], *, max_size: int = 1024, band: int = 1
) -> tuple[np.ndarray, float | None]:
    """Read a map band decimated (nearest neighbour) to at most ``max_size`` on its long side.

    Args:
        path: the raster.
        max_size: the longest side of the returned array.
        band: the band to read.

    Returns:
        ``(array, nodata)``: the decimated values and the band's nodata value.

    Raises:
        InputError: when the file is missing or not a raster.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("map not found", path=path, hint="check the path")
    try:
        with rasterio.open(path) as ds:
            shape = decimated_shape((ds.height, ds.width), max_size)
            data = ds.read(band, out_shape=shape, resampling=Resampling.nearest)
            return data, ds.nodata
    except RasterioIOError as exc:
        raise InputError(f"cannot be read as a raster ({exc})", path=path,
                         hint="give a GeoTIFF class map") from None


def _decimate_array(array: np.ndarray, max_size: int) -> np.ndarray:
    h, w = array.shape
    oh, ow = decimated_shape((h, w), max_size)
    if (oh, ow) == (h, w):
        return array
    rows = ((np.arange(oh) + 0.5) * h / oh).astype(np.intp)
    cols = ((np.arange(ow) + 0.5) * w / ow).astype(np.intp)
    return array[np.ix_(rows, cols)]


def quicklook(
    source: str | os.PathLike[str] | np.ndarray,
    classes: ClassTable | None,
    output: str | os.PathLike[str],
    *,
    max_size: int = 1024,
    title: str | None = None,
    overwrite: bool = False,
    points: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Draw a class map as a PNG with a legend (and coordinates and a scale bar).

    The map is drawn pixel for pixel (no smoothing): maps larger than ``max_size`` are
    decimated to ``max_size`` on their longer side, smaller ones are enlarged by the largest
    whole factor that stays within ``max_size``. The aspect ratio is kept. Nodata (0, or the
    file's nodata value) is white; values that are no class of the table are grey. The legend
    (class id, name and colour of the classes in the table) is drawn to the right of the map
    and the title above it, so the PNG is wider than the map by the legend's width. A
    georeferenced, north-up map also gets its coordinates along the left and bottom edges,
    its CRS and a scale bar below it.

    Args:
        source: a map GeoTIFF (read decimated) or a 2-D array of class ids.
        classes: the class table; ``None`` reads it from the map's tags or sidecar (see
            :func:`diffclip_cli.io.maps.read_map`), or uses default colours and the ids as names.
        output: the PNG to write.
        max_size: the longest side of the map in the PNG, in pixels.
        title: a title above the map.
        overwrite: replace an existing PNG.
        points: ``(rows, cols)`` of points to mark on the map (pixel positions of
            ``source``), numbered in their order (``diffclip suggest``'s ranks).

    Returns:
        The PNG's path.

    Raises:
        InputError: when ``source`` is not a readable raster or not 2-D.
        OutputError: when ``output`` exists (without ``overwrite``) or cannot be written.
    """
    out = check_output(output, overwrite=overwrite)
    fig = quicklook_figure(source, classes, max_size=max_size, title=title, points=points)
    with atomic_path(out, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return out


def quicklook_figure(
    source: str | os.PathLike[str] | np.ndarray,
    classes: ClassTable | None,
    *,
    max_size: int = 1024,
    title: str | None = None,
    points: tuple[np.ndarray, np.ndarray] | None = None,
) -> Any:
    """The matplotlib figure :func:`quicklook` saves (same arguments, no output)."""
    frame = None
    if isinstance(source, np.ndarray):
        if source.ndim != 2:
            raise InputError(f"a quicklook needs a 2-D class map, got shape {source.shape}")
        full = source.shape
        data = _decimate_array(source, max_size)
    else:
        with rasterio.open(source) as ds:
            full = (ds.height, ds.width)
        data, nodata = read_decimated(source, max_size=max_size)
        if nodata is not None and nodata != 0:
            data = np.where(data == nodata, 0, data)
        with rasterio.open(source) as ds:
            frame = map_frame(ds)
        if classes is None:
            from diffclip_cli.io.maps import read_map

            classes = read_map(source).classes
    data = np.asarray(data).astype(np.int64, copy=False)
    if data.size and data.min() < 0:
        data = np.where(data < 0, 0, data)
    legend_classes = _legend_classes(classes, data)
    rgba = _colorize(data, legend_classes)
    factor = max(1, max_size // max(data.shape)) if max(data.shape) < max_size else 1
    if factor > 1:
        rgba = np.repeat(np.repeat(rgba, factor, axis=0), factor, axis=1)
    has_unknown = bool(np.isin(data, [0, *(c.id for c in legend_classes)], invert=True).any())
    marks = None
    if points is not None:  # centres of the points' pixels, in the drawn map's pixels
        sy, sx = data.shape[0] * factor / full[0], data.shape[1] * factor / full[1]
        marks = ((np.asarray(points[1]) + 0.5) * sx, (np.asarray(points[0]) + 0.5) * sy)
    return _figure(rgba, legend_classes, title=title, nodata=bool((data == 0).any()),
                   unknown=has_unknown, frame=frame, marks=marks)


def _legend_classes(classes: ClassTable | None, data: np.ndarray) -> list[ClassInfo]:
    if classes is not None:
        return list(classes)
    ids = [int(v) for v in np.unique(data) if v != 0]
    return [ClassInfo(i, f"class {i}", "", DEFAULT_PALETTE[(i - 1) % len(DEFAULT_PALETTE)])
            for i in ids]


def _colorize(data: np.ndarray, classes: list[ClassInfo]) -> np.ndarray:
    """RGBA uint8 image: class colours, nodata white, other values grey."""
    ids = np.asarray([c.id for c in classes], dtype=np.int64)
    colors = np.asarray([(*c.rgb, 255) for c in classes] + [(*UNKNOWN_COLOR, 255)],
                        dtype=np.uint8).reshape(-1, 4)
    order = np.argsort(ids)
    sorted_ids = ids[order]
    if sorted_ids.size:
        pos = np.clip(np.searchsorted(sorted_ids, data), 0, sorted_ids.size - 1)
        idx = np.where(sorted_ids[pos] == data, order[pos], ids.size)
    else:
        idx = np.zeros(data.shape, dtype=np.intp)
    rgba = colors[idx]
    rgba[data == 0] = (255, 255, 255, 255)
    return rgba


def _unit_rgb(rgb: Sequence[int]) -> tuple[float, float, float]:
    """An 8-bit ``(r, g, b)`` as matplotlib's 0..1 floats."""
    r, g, b = (float(v) / 255 for v in rgb)
    return r, g, b


def _figure(rgba: np.ndarray, classes: list[ClassInfo], *, title: str | None, nodata: bool,
            unknown: bool, frame: MapFrame | None = None,
            marks: tuple[np.ndarray, np.ndarray] | None = None) -> Any:
    """Lay the map out pixel for pixel, with the legend measured first so nothing is cut."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle
    from matplotlib.transforms import IdentityTransform

    handles = [Patch(facecolor=_unit_rgb(c.rgb), edgecolor="0.3", linewidth=0.5,
                     label=f"{c.id} {c.name}".replace("$", r"\$")) for c in classes]
    if unknown:
        handles.append(Patch(facecolor=_unit_rgb(UNKNOWN_COLOR), edgecolor="0.3",
                             linewidth=0.5, label="other value"))
    if nodata:
        handles.append(Patch(facecolor="white", edgecolor="0.3", linewidth=0.5,
                             label="no data"))
    h, w = rgba.shape[:2]
    rows_fit = max(10, h // 20)
    ncol = max(1, -(-len(handles) // rows_fit)) if handles else 1
    legend_kw: dict[str, Any] = {"handles": handles, "loc": "upper left", "frameon": False,
                                 "fontsize": 9, "ncols": ncol, "borderaxespad": 0.0,
                                 "borderpad": 0.2}

    # Measure the legend (its pixel size does not depend on the figure size).
    probe = Figure(figsize=(4, 4), dpi=_DPI)
    canvas = FigureCanvasAgg(probe)
    leg_w = leg_h = 0
    if handles:
        box = probe.legend(**legend_kw).get_window_extent(canvas.get_renderer())
        leg_w, leg_h = int(np.ceil(box.width)) + 2, int(np.ceil(box.height)) + 2
    title_h = 0
    if title:
        text = probe.text(0, 0, title.replace("$", r"\$"), fontsize=11)
        title_h = int(np.ceil(text.get_window_extent(canvas.get_renderer()).height)) + _PAD

    x0 = _PAD + (_COORD_LEFT if frame is not None else 0)
    below = _COORD_BELOW if frame is not None else 0
    width = x0 + w + (2 * _PAD + leg_w if handles else _PAD)
    body = max(h + below, leg_h)
    height = _PAD + title_h + body + _PAD
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    # figimage counts pixels from the bottom left; origin="upper" keeps row 0 at the top.
    y0 = height - _PAD - title_h - h
    fig.figimage(rgba, xo=x0, yo=y0, origin="upper")
    # A thin frame, so that white nodata at the edges still shows where the map ends.
    # Drawn one pixel outside the map (lines are centred on their coordinates).
    fig.add_artist(Rectangle((x0 - 1.5, y0 - 1.5), w + 3, h + 3,
                             transform=IdentityTransform(), fill=False, edgecolor="0.6",
                             linewidth=72 / _DPI, antialiased=False))
    if frame is not None:
        _coordinates(fig, frame, x0=x0, y0=y0, w=w, h=h, width=width, height=height)
    if marks is not None and marks[0].size:
        # figure pixels from the bottom left; each point numbered in its order
        xs, ys = x0 + marks[0], y0 + h - marks[1]
        fig.add_artist(_marks(xs, ys))
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            fig.text(x + 4, y + 3, str(i + 1), fontsize=7, color="black",
                     transform=IdentityTransform(),
                     bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none",
                           "alpha": 0.7})
    if handles:
        top = (height - _PAD - title_h) / height
        fig.legend(**legend_kw, bbox_to_anchor=((x0 + w + 2 * _PAD) / width, top),
                   bbox_transform=fig.transFigure)
    if title:
        fig.text(_PAD / width, 1 - _PAD / height, title.replace("$", r"\$"), fontsize=11,
                 ha="left", va="top")
    return fig


def _marks(xs: np.ndarray, ys: np.ndarray) -> Any:
    """Ringed markers at figure pixel positions."""
    from matplotlib.lines import Line2D
    from matplotlib.transforms import IdentityTransform

    return Line2D(xs, ys, linestyle="none", marker="o", markersize=6,
                  markerfacecolor="black", markeredgecolor="white", markeredgewidth=1.2,
                  transform=IdentityTransform())


def _coordinates(fig: Any, frame: MapFrame, *, x0: int, y0: int, w: int, h: int, width: int,
                 height: int) -> None:
    """Ticks with map coordinates on the left and bottom edges, the CRS and a scale bar."""
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator, ScalarFormatter
    from matplotlib.transforms import IdentityTransform

    ax = fig.add_axes((x0 / width, y0 / height, w / width, h / height))
    ax.set_xlim(frame.left, frame.right)
    ax.set_ylim(frame.bottom, frame.top)
    ax.patch.set_alpha(0.0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    for axis, n, (lo, hi), size in ((ax.xaxis, max(2, w // 110), (frame.left, frame.right), w),
                                    (ax.yaxis, max(2, h // 110), (frame.bottom, frame.top), h)):
        # Round values inside the edge (labels at the corners would run into each other).
        margin = (hi - lo) * min(0.45, 30 / size)
        ticks = [v for v in MaxNLocator(n, min_n_ticks=2).tick_values(lo, hi)
                 if lo + margin <= v <= hi - margin]
        axis.set_ticks(ticks)
        formatter = ScalarFormatter(useOffset=False)
        formatter.set_scientific(False)
        axis.set_major_formatter(formatter)
    ax.tick_params(labelsize=7, length=3, pad=1, colors="0.25")
    for label in ax.get_yticklabels():
        label.set_rotation(90)
        label.set_verticalalignment("center")

    # Scale bar: a round length of about a quarter of the map's width, below the x labels.
    units_per_pixel = (frame.right - frame.left) / w
    metres = nice_length(0.25 * w * units_per_pixel * frame.metres_per_unit)
    bar = metres / (units_per_pixel * frame.metres_per_unit)
    bar_y = y0 - _COORD_BELOW + 14
    fig.add_artist(Rectangle((x0, bar_y), bar, 4, transform=IdentityTransform(),
                             facecolor="black", edgecolor="black", linewidth=0))
    fig.add_artist(Rectangle((x0 + bar / 2, bar_y), bar / 2, 4, transform=IdentityTransform(),
                             facecolor="white", edgecolor="black", linewidth=0.5))
    label = f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"
    fig.text((x0 + bar + 6) / width, (bar_y + 2) / height, label, fontsize=8, va="center",
             ha="left")
    fig.text((x0 + w) / width, (bar_y + 2) / height, frame.crs, fontsize=7, va="center",
             ha="right", color="0.25")
