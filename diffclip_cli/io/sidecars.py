"""What a class map carries beside its pixels: the side files GIS software reads, and their paths.

A class map ``map.tif`` comes with ``map.tif.aux.xml`` (GDAL's PAM: category names and a
raster attribute table; gdalinfo, QGIS and ArcGIS show the class names), ``map.qml`` (a QGIS
paletted style with each class's colour and name) and ``map.tif.json`` (the sidecar with the
class table and provenance). This module builds their text and names them;
:class:`~diffclip_cli.io.maps.MapWriter` writes them with the map.
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from diffclip_cli.io.classes import ClassTable

__all__ = ["aux_xml_path", "class_aux_xml", "class_colormap", "map_files", "qgis_style",
           "qml_path", "sidecar_path"]


def class_colormap(classes: ClassTable) -> dict[int, tuple[int, int, int, int]]:
    """The colour table of a class map: 0 (nodata) transparent black, each class its colour."""
    cmap: dict[int, tuple[int, int, int, int]] = {0: (0, 0, 0, 0)}
    for c in classes:
        cmap[c.id] = (*c.rgb, 255)
    return cmap


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar JSON of a map: the map's file name plus ``.json`` (``map.tif.json``)."""
    return Path(os.fspath(path) + ".json")


def aux_xml_path(path: str | os.PathLike[str]) -> Path:
    """GDAL's PAM side file of a raster: its file name plus ``.aux.xml`` (``map.tif.aux.xml``)."""
    return Path(os.fspath(path) + ".aux.xml")


def qml_path(path: str | os.PathLike[str]) -> Path:
    """The QGIS style QGIS loads with a raster: its name with ``.qml`` (``map.qml``)."""
    return Path(path).with_suffix(".qml")


def map_files(path: str | os.PathLike[str], *, sidecar: bool = True,
              styles: bool = True) -> list[Path]:
    """Every file :class:`MapWriter` writes for the map ``path``, the map first.

    The sidecar JSON (:func:`sidecar_path`) with ``sidecar``, the PAM ``.aux.xml``
    (:func:`aux_xml_path`) and the QGIS ``.qml`` (:func:`qml_path`) with ``styles``: what a
    command declares as the map's files in its :func:`~diffclip_cli.io.atomic.output_set`,
    so they are checked against the inputs and the other outputs before any work, and renamed
    with the map.
    """
    files = [Path(path)]
    if sidecar:
        files.append(sidecar_path(path))
    if styles:
        files += [aux_xml_path(path), qml_path(path)]
    return files


# GDAL raster attribute table codes (gdal.h): field types and usages.
_GFT_INTEGER, _GFT_STRING = 0, 2
_GFU_GENERIC, _GFU_NAME, _GFU_MINMAX, _GFU_RED, _GFU_GREEN, _GFU_BLUE, _GFU_ALPHA = (
    0, 2, 5, 6, 7, 8, 9)


def class_aux_xml(classes: ClassTable) -> str:
    """A GDAL PAM document giving band 1 the class names and a raster attribute table.

    GDAL reads it with the map (``gdalinfo`` prints the ``Categories`` and the RAT; QGIS and
    ArcGIS show the names): category names indexed by pixel value (0, nodata, and values that
    are no class are empty), and a thematic RAT with one row per class and the columns
    ``Value``, ``Class``, ``Description``, ``Red``, ``Green``, ``Blue``, ``Alpha``.

    Args:
        classes: the map's class table.

    Returns:
        The XML text of ``<map>.aux.xml``.
    """
    names = {c.id: c.name for c in classes}
    categories = "".join(
        f"      <Category>{escape(names.get(v, ''))}</Category>\n"
        for v in range(max(classes.ids) + 1))
    fields = [("Value", _GFT_INTEGER, _GFU_MINMAX), ("Class", _GFT_STRING, _GFU_NAME),
              ("Description", _GFT_STRING, _GFU_GENERIC), ("Red", _GFT_INTEGER, _GFU_RED),
              ("Green", _GFT_INTEGER, _GFU_GREEN), ("Blue", _GFT_INTEGER, _GFU_BLUE),
              ("Alpha", _GFT_INTEGER, _GFU_ALPHA)]
    defs = "".join(
        f'      <FieldDefn index="{i}">\n        <Name>{name}</Name>\n'
        f"        <Type>{kind}</Type>\n        <Usage>{usage}</Usage>\n      </FieldDefn>\n"
        for i, (name, kind, usage) in enumerate(fields))
    rows = "".join(
        f'      <Row index="{k}">\n'
        + "".join(f"        <F>{escape(str(v))}</F>\n"
                  for v in (c.id, c.name, c.description, *c.rgb, 255))
        + "      </Row>\n"
        for k, c in enumerate(classes))
    return ('<PAMDataset>\n  <PAMRasterBand band="1">\n    <CategoryNames>\n'
            f"{categories}    </CategoryNames>\n"
            '    <GDALRasterAttributeTable tableType="thematic">\n'
            f"{defs}{rows}    </GDALRasterAttributeTable>\n"
            "  </PAMRasterBand>\n</PAMDataset>\n")


def qgis_style(classes: ClassTable) -> str:
    """A QGIS layer style (``.qml``): a paletted renderer with each class's colour and name.

    QGIS applies ``map.qml`` when it opens ``map.tif``, so the legend shows the class names
    (not the ids) in the map's colours; nodata (0) stays transparent.

    Args:
        classes: the map's class table.

    Returns:
        The XML text of the style.
    """
    entries = "".join(
        f"        <paletteEntry value=\"{c.id}\" color=\"{c.hex}\" alpha=\"255\" "
        f"label={quoteattr(c.name)}/>\n" for c in classes)
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            '<qgis version="3.28" styleCategories="Symbology">\n'
            "  <pipe>\n"
            '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" '
            'nodataColor="">\n'
            "      <rasterTransparency/>\n"
            "      <colorPalette>\n"
            f"{entries}"
            "      </colorPalette>\n"
            "    </rasterrenderer>\n"
            '    <rasterresampler maxOversampling="2"/>\n'
            "  </pipe>\n"
            "  <blendMode>0</blendMode>\n"
            "</qgis>\n")
