"""Read what GDAL itself reports about a raster band: category names and the raster attribute
table, through the GDAL library rasterio is built on (the C API, as ``gdalinfo`` calls it).

``osgeo.gdal`` is used when installed; otherwise the same C functions are called with ctypes
on the libgdal that rasterio has loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from dataclasses import dataclass

import rasterio


@dataclass
class BandInfo:
    categories: list[str]
    rat_columns: list[tuple[str, int, int]]  # (name, type, usage)
    rat_rows: list[list[str]]


def _libgdal() -> ctypes.CDLL:
    base = os.path.dirname(os.path.dirname(rasterio.__file__))
    found = sorted(glob.glob(os.path.join(base, "rasterio.libs", "libgdal*.so*")))
    name = found[0] if found else ctypes.util.find_library("gdal")
    if name is None:
        raise RuntimeError("no libgdal found")
    lib = ctypes.CDLL(name)
    lib.GDALOpen.restype = ctypes.c_void_p
    lib.GDALOpen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.GDALClose.argtypes = [ctypes.c_void_p]
    lib.GDALGetGeoTransform.restype = ctypes.c_int
    lib.GDALGetGeoTransform.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_double)]
    lib.GDALGetRasterBand.restype = ctypes.c_void_p
    lib.GDALGetRasterBand.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.GDALGetRasterCategoryNames.restype = ctypes.POINTER(ctypes.c_char_p)
    lib.GDALGetRasterCategoryNames.argtypes = [ctypes.c_void_p]
    lib.GDALGetDefaultRAT.restype = ctypes.c_void_p
    lib.GDALGetDefaultRAT.argtypes = [ctypes.c_void_p]
    for fn in ("GDALRATGetRowCount", "GDALRATGetColumnCount"):
        getattr(lib, fn).restype = ctypes.c_int
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
    lib.GDALRATGetNameOfCol.restype = ctypes.c_char_p
    lib.GDALRATGetNameOfCol.argtypes = [ctypes.c_void_p, ctypes.c_int]
    for fn in ("GDALRATGetTypeOfCol", "GDALRATGetUsageOfCol"):
        getattr(lib, fn).restype = ctypes.c_int
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.GDALRATGetValueAsString.restype = ctypes.c_char_p
    lib.GDALRATGetValueAsString.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.GDALAllRegister()
    return lib


def band_info(path: str | os.PathLike[str], band: int = 1) -> BandInfo:
    """Category names and RAT of a band as GDAL reports them (in gdalinfo's order)."""
    try:
        from osgeo import gdal  # type: ignore[import-not-found]
    except ImportError:
        gdal = None
    if gdal is not None:
        ds = gdal.Open(os.fspath(path))
        ds.GetGeoTransform()
        b = ds.GetRasterBand(band)
        rat = b.GetDefaultRAT()
        cols = [] if rat is None else [(rat.GetNameOfCol(i), rat.GetTypeOfCol(i),
                                        rat.GetUsageOfCol(i)) for i in range(rat.GetColumnCount())]
        rows = [] if rat is None else [[rat.GetValueAsString(r, c) for c in range(len(cols))]
                                       for r in range(rat.GetRowCount())]
        return BandInfo(list(b.GetCategoryNames() or []), cols, rows)
    lib = _libgdal()
    with rasterio.Env():  # the same GDAL configuration rasterio uses
        ds = lib.GDALOpen(os.fspath(path).encode(), 0)
        assert ds, f"GDAL cannot open {path}"
        try:
            # gdalinfo asks for the geotransform first; GTiff loads the PAM file (.aux.xml)
            # lazily on such a call, and GetCategoryNames alone does not trigger it.
            lib.GDALGetGeoTransform(ds, (ctypes.c_double * 6)())
            b = lib.GDALGetRasterBand(ds, band)
            names = lib.GDALGetRasterCategoryNames(b)
            categories: list[str] = []
            if names:
                i = 0
                while names[i] is not None:
                    categories.append(names[i].decode())
                    i += 1
            rat = lib.GDALGetDefaultRAT(b)
            cols: list[tuple[str, int, int]] = []
            rows: list[list[str]] = []
            if rat:
                cols = [(lib.GDALRATGetNameOfCol(rat, i).decode(),
                         lib.GDALRATGetTypeOfCol(rat, i), lib.GDALRATGetUsageOfCol(rat, i))
                        for i in range(lib.GDALRATGetColumnCount(rat))]
                rows = [[lib.GDALRATGetValueAsString(rat, r, c).decode()
                         for c in range(len(cols))] for r in range(lib.GDALRATGetRowCount(rat))]
        finally:
            lib.GDALClose(ds)
    return BandInfo(categories, cols, rows)
