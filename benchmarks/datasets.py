"""The paper's benchmark datasets: MATLAB folder reader, known-dataset table, GeoTIFF export.

Houston 2013, Trento and MUUFL are usually distributed as a folder of MATLAB files (``HSI.mat``,
``LiDAR.mat``, ``TRLabel.mat``, ``TSLabel.mat``), with many variations in file and variable
names, MATLAB versions (v5 or the HDF5-based v7.3) and array orientation. :func:`load_mat_folder`
classifies every array of every ``.mat`` file by shape and values instead of relying on names,
and uses names only where shapes cannot decide (which label map is the training split).
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._deps import require
from diffclip_cli.errors import InputError
from diffclip_cli.io.atomic import atomic_path
from diffclip_cli.io.classes import ClassTable

__all__ = [
    "KNOWN_DATASETS",
    "Dataset",
    "KnownDataset",
    "identify",
    "load_mat_folder",
    "paper_provenance",
    "paper_rows",
    "write_geotiffs",
]

_LOG = logging.getLogger("diffclip")


# --------------------------------------------------------------------------------------------
# The in-memory dataset
# --------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """A benchmark scene held in memory, on one pixel grid.

    Attributes:
        name: a short name (by default the folder's name).
        hsi: ``(C, H, W)`` float32 hyperspectral cube.
        lidar: ``(L, H, W)`` float32 LiDAR rasters, or ``None``.
        labels: ``(H, W)`` int32, every labelled pixel (the train and test maps merged);
            0 = unlabelled, classes 1..K.
        train_labels: ``(H, W)`` int32 training map of the fixed standard split, or ``None``.
        test_labels: ``(H, W)`` int32 test map of the fixed standard split, or ``None``.
        class_names: names of classes 1..K (``class_names[k - 1]`` is class ``k``), or ``None``.
        sources: where each part came from: role (``hsi``, ``lidar``, ``lidar.1``, ...,
            ``labels``, ``train``, ``test``) -> file.
        variables: the same roles -> the variable name inside that file.
    """

    name: str
    hsi: np.ndarray
    lidar: np.ndarray | None
    labels: np.ndarray
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    class_names: list[str] | None = None
    sources: dict[str, Path] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hsi = np.ascontiguousarray(self.hsi, dtype=np.float32)
        if self.hsi.ndim != 3:
            raise ValueError(f"hsi must be (C, H, W), got shape {self.hsi.shape}")
        grid = self.hsi.shape[1:]
        if self.lidar is not None:
            self.lidar = np.ascontiguousarray(self.lidar, dtype=np.float32)
            if self.lidar.ndim == 2:
                self.lidar = self.lidar[None]
            if self.lidar.ndim != 3 or self.lidar.shape[1:] != grid:
                raise ValueError(f"lidar must be (L, {grid[0]}, {grid[1]}), "
                                 f"got shape {self.lidar.shape}")
        for attr in ("labels", "train_labels", "test_labels"):
            value = getattr(self, attr)
            if value is None:
                continue
            value = np.asarray(value)
            if value.shape != grid:
                raise ValueError(f"{attr} must be {grid}, got shape {value.shape}")
            setattr(self, attr, value.astype(np.int32, copy=False))
        if (self.train_labels is None) != (self.test_labels is None):
            raise ValueError("give both train_labels and test_labels, or neither")

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the grid."""
        return (int(self.hsi.shape[1]), int(self.hsi.shape[2]))

    @property
    def hsi_bands(self) -> int:
        """Number of HSI bands."""
        return int(self.hsi.shape[0])

    @property
    def lidar_bands(self) -> int:
        """Number of LiDAR channels (0 without LiDAR)."""
        return 0 if self.lidar is None else int(self.lidar.shape[0])

    @property
    def has_split(self) -> bool:
        """Whether the dataset comes with a fixed train/test split."""
        return self.train_labels is not None

    @property
    def class_ids(self) -> list[int]:
        """The class ids that label at least one pixel, ascending."""
        ids = np.unique(self.labels)
        return [int(i) for i in ids if i > 0]

    def classes(self) -> ClassTable:
        """A class table of the classes present, named from :attr:`class_names` when known."""
        names = self.class_names or []
        return ClassTable(
            {"id": k, "name": names[k - 1] if k <= len(names) else f"class {k}"}
            for k in self.class_ids
        )


# --------------------------------------------------------------------------------------------
# The paper's datasets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownDataset:
    """One of the paper's datasets, as commonly distributed.

    Attributes:
        key: the key used in ``paper_table.csv`` and by :func:`identify`.
        title: the dataset's usual name.
        height: rows of the standard grid.
        width: columns of the standard grid.
        hsi_bands: HSI bands.
        lidar_channels: LiDAR channels in the paper's version.
        class_names: the standard class names, class 1 first.
        labelled: labelled pixels (standard train + test).
        train: pixels of the standard training map (``None``: no fixed split).
        aliases: normalised name fragments that name the dataset (lower case, alphanumerics).
    """

    key: str
    title: str
    height: int
    width: int
    hsi_bands: int
    lidar_channels: int
    class_names: tuple[str, ...]
    labelled: int
    train: int | None
    aliases: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


#: The paper's three datasets (method brief, "Datasets of the paper").
KNOWN_DATASETS: dict[str, KnownDataset] = {
    d.key: d
    for d in (
        KnownDataset(
            key="houston2013",
            title="Houston 2013 (IEEE GRSS Data Fusion Contest 2013)",
            height=349, width=1905, hsi_bands=144, lidar_channels=1,
            class_names=(
                "Healthy grass", "Stressed grass", "Synthetic grass", "Trees", "Soil", "Water",
                "Residential", "Commercial", "Road", "Highway", "Railway", "Parking Lot 1",
                "Parking Lot 2", "Tennis Court", "Running Track",
            ),
            labelled=15029, train=2832,
            aliases=("houston2013", "houston13", "2013houston", "dfc2013", "grss2013", "houston"),
        ),
        KnownDataset(
            key="trento",
            title="Trento",
            height=166, width=600, hsi_bands=63, lidar_channels=1,
            class_names=("Apple trees", "Buildings", "Ground", "Woods", "Vineyard", "Roads"),
            labelled=30214, train=819,
            aliases=("trento",),
        ),
        KnownDataset(
            key="muufl",
            title="MUUFL Gulfport",
            height=325, width=220, hsi_bands=64, lidar_channels=2,
            class_names=(
                "Trees", "Mostly grass", "Mixed ground surface", "Dirt and sand", "Road",
                "Water", "Building shadow", "Buildings", "Sidewalk", "Yellow curb",
                "Cloth panels",
            ),
            labelled=53687, train=None,
            aliases=("muufl", "gulfport"),
        ),
    )
}


def _normalise_name(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def identify(dataset: Dataset) -> str | None:
    """Tell which of the paper's datasets this is, so its published rows can be shown beside.

    A dataset is recognised by its grid and band count (with no class id above the known class
    count), or else by its name or folder name (e.g. ``Trento``, ``MUUFL``, ``Houston2013``)
    when it has exactly the known number of classes.

    Args:
        dataset: the dataset.

    Returns:
        A key of :data:`KNOWN_DATASETS`, or ``None``.
    """
    n_classes = int(dataset.labels.max(initial=0))
    for spec in KNOWN_DATASETS.values():
        if (dataset.shape == (spec.height, spec.width) and dataset.hsi_bands == spec.hsi_bands
                and n_classes <= spec.n_classes):
            return spec.key
    names = [dataset.name, *(p.parent.name for p in dataset.sources.values())]
    normalised = [_normalise_name(n) for n in names if n]
    for spec in KNOWN_DATASETS.values():
        if n_classes != spec.n_classes:
            continue
        if any(alias in n for alias in spec.aliases for n in normalised):
            _LOG.info("%s: taken for %s by its name (grid %d x %d, %d bands differ from the "
                      "standard %d x %d, %d bands)", dataset.name, spec.title, *dataset.shape,
                      dataset.hsi_bands, spec.height, spec.width, spec.hsi_bands)
            return spec.key
    return None


@functools.lru_cache(maxsize=1)
def _paper_table() -> tuple[str, tuple[dict[str, Any], ...]]:
    text = importlib.resources.files("benchmarks").joinpath("paper_table.csv").read_text(
        encoding="utf-8")
    lines = text.splitlines()
    provenance = " ".join(line.lstrip("# ").strip() for line in lines if line.startswith("#"))
    body = [line for line in lines if line.strip() and not line.startswith("#")]
    rows = tuple(
        {
            "shots": int(r["setting"]),
            "method": r["method"],
            "dataset": r["dataset"],
            "oa": float(r["oa"]),
            "aa": float(r["aa"]),
            "kappa": float(r["kappa"]),
        }
        for r in csv.DictReader(io.StringIO("\n".join(body)))
    )
    return provenance, rows


def paper_provenance() -> str:
    """Where the paper's numbers come from (the provenance line of ``paper_table.csv``)."""
    return _paper_table()[0]


def paper_rows(key: str, shots: int | None = None) -> list[dict[str, Any]]:
    """The paper's Table 1 rows for one dataset (every method), in the table's order.

    Args:
        key: a key of :data:`KNOWN_DATASETS`.
        shots: only rows of this many shots per class (2, 8 or 20); ``None`` for all.
            A shot count the paper did not run gives an empty list.

    Returns:
        Dictionaries with keys ``shots``, ``method``, ``dataset``, ``oa``, ``aa``, ``kappa``
        (percentages, as published).

    Raises:
        ValueError: for an unknown dataset key.
    """
    if key not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset {key!r}; known: {sorted(KNOWN_DATASETS)}")
    return [
        dict(r) for r in _paper_table()[1]
        if r["dataset"] == key and (shots is None or r["shots"] == shots)
    ]


# --------------------------------------------------------------------------------------------
# Reading a folder of MATLAB files
# --------------------------------------------------------------------------------------------

_LABEL_WORDS = {"", "label", "labels", "lbl", "gt", "map", "mask", "set", "data", "idx"}
_LIDAR_WORDS = ("lidar", "elevation", "height")  # matched anywhere in a name
_LIDAR_TOKENS = ("dsm", "ndsm", "dem", "dtm", "chm")  # matched as whole words
_HSI_WORDS = ("hsi", "hyper", "spectral")
_HSI_TOKENS = ("hs", "casi")
_MAX_LIDAR_CHANNELS = 8
_MAX_LABEL_CLASSES = 256


@dataclass
class _Var:
    """One numeric array found in a .mat file."""

    path: Path
    name: str
    data: np.ndarray  # MATLAB's (row, col, band) order as far as the file says
    hdf5: bool  # HDF5 (v7.3): may also be read in the other axis order
    fitted: np.ndarray | None = None  # (H, W) or (C, H, W) once placed on the grid
    flipped: bool = False

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.name}"

    @property
    def shape_text(self) -> str:
        return " x ".join(str(s) for s in self.data.shape)

    def orientations(self) -> list[np.ndarray]:
        return [self.data, self.data.T] if self.hdf5 else [self.data]


def _tokens(name: str) -> list[str]:
    parts = re.findall(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+", name)
    return [p.lower() for p in parts]


def _split_role(name: str) -> str | None:
    """'train', 'test' or None from a file or variable name (TRLabel, mask_test, trainlabels)."""
    lower = name.lower()
    tokens = _tokens(name)
    train = "train" in lower or any(
        t in ("tr", "trn") or (t.startswith("tr") and t[2:] in _LABEL_WORDS) for t in tokens)
    test = "test" in lower or any(
        t in ("ts", "te", "tst") or (t[:2] in ("ts", "te") and t[2:] in _LABEL_WORDS)
        for t in tokens)
    if train == test:
        return None
    return "train" if train else "test"


def _kind_hint(var: _Var) -> str | None:
    """'lidar' or 'hsi' when the variable's (or else its file's) name says so."""
    for text in (var.name, var.path.stem):
        lower, tokens = text.lower(), _tokens(text)
        lidar = any(w in lower for w in _LIDAR_WORDS) or any(t in tokens for t in _LIDAR_TOKENS)
        hsi = any(w in lower for w in _HSI_WORDS) or any(t in tokens for t in _HSI_TOKENS)
        if lidar != hsi:
            return "lidar" if lidar else "hsi"
    return None


def _read_v5(path: Path) -> list[_Var]:
    sio = require("scipy.io", purpose="reading MATLAB files")
    try:
        content = sio.loadmat(path)
    except NotImplementedError:  # v7.3 that h5py did not recognise
        raise InputError("is a MATLAB v7.3 file that could not be opened as HDF5", path=path,
                         hint="re-save it in MATLAB with save(..., '-v7')") from None
    except Exception as exc:  # scipy raises a zoo of types for corrupt files
        raise InputError(f"cannot be read as a MATLAB file ({exc})", path=path,
                         hint="check that it is a complete .mat file") from None
    return [_Var(path, k, v, hdf5=False) for k, v in content.items() if not k.startswith("__")]


def _read_hdf5(path: Path) -> list[_Var]:
    h5py = require("h5py", purpose="reading MATLAB v7.3 files")
    out: list[_Var] = []
    try:
        with open(path, "rb") as fh:
            matlab_header = fh.read(128).startswith(b"MATLAB")
        with h5py.File(path, "r") as f:
            for name, item in f.items():
                if name.startswith("#") or not isinstance(item, h5py.Dataset):
                    _LOG.debug("%s: %s is not an array (a struct or cell?), skipped",
                               path.name, name)
                    continue
                mclass = item.attrs.get("MATLAB_class", b"")
                mclass = mclass.decode() if isinstance(mclass, bytes) else str(mclass)
                if mclass in ("char", "cell", "struct", "function_handle") or (
                        "MATLAB_empty" in item.attrs):
                    continue
                data = item[()]
                # MATLAB stores column-major: HDF5 sees the axes reversed.
                matlab = matlab_header or bool(mclass)
                out.append(_Var(path, name, data.T if matlab else data, hdf5=True))
    except OSError as exc:
        raise InputError(f"cannot be read as an HDF5 (MATLAB v7.3) file ({exc})", path=path,
                         hint="check that it is a complete .mat file") from None
    return out


def _read_mat(path: Path) -> list[_Var]:
    h5py = require("h5py", purpose="reading MATLAB v7.3 files")
    found = _read_hdf5(path) if h5py.is_hdf5(path) else _read_v5(path)
    usable = []
    for var in found:
        data = np.asarray(var.data)
        if (data.dtype.kind not in "iuf" or data.ndim not in (2, 3)
                or sum(s > 1 for s in data.shape) < 2):
            _LOG.debug("%s: skipped (%s %s)", var.where, data.dtype, data.shape)
            continue
        usable.append(var)
    return usable


def _fit(array: np.ndarray, grid: tuple[int, int]) -> np.ndarray | None:
    """The array on the grid, band-first for 3-D, or None when it does not fit."""
    if array.ndim == 2:
        return array if array.shape == grid else None
    if array.shape[:2] == grid:
        return np.moveaxis(array, 2, 0)
    if array.shape[1:] == grid:
        return array
    return None


def _choose_grid(variables: list[_Var], folder: Path) -> tuple[int, int]:
    """The (H, W) most arrays agree on, in their stored orientation first (2-D arrays vote)."""
    candidates = {tuple(o.shape) for v in variables if v.data.ndim == 2
                  for o in v.orientations()}
    if not candidates:
        raise InputError(
            "no label map (a 2-D integer array) in any .mat file", path=folder,
            hint="add the ground truth, e.g. TRLabel.mat and TSLabel.mat, or gt.mat")

    def score(grid: tuple[int, int]) -> tuple[int, int]:
        direct = sum(_fit(v.data, grid) is not None for v in variables)
        either = sum(any(_fit(o, grid) is not None for o in v.orientations())
                     for v in variables)
        return (either, direct)

    ranked = sorted(candidates, key=score, reverse=True)
    if len(ranked) > 1 and score(ranked[0]) == score(ranked[1]):
        raise InputError(
            f"the arrays disagree on the pixel grid ({ranked[0][0]} x {ranked[0][1]} or "
            f"{ranked[1][0]} x {ranked[1][1]})", path=folder,
            hint="check that all .mat files belong to the same scene")
    return ranked[0]


def _place(variables: list[_Var], grid: tuple[int, int], files: list[Path]) -> list[_Var]:
    placed: list[_Var] = []
    for var in variables:
        for k, orientation in enumerate(var.orientations()):
            fitted = _fit(orientation, grid)
            if fitted is not None:
                var.fitted, var.flipped = fitted, k > 0
                break
        if var.fitted is None:
            continue
        if var.flipped:
            _LOG.info("%s: stored in the other axis order; read as %s to match the grid",
                      var.where, " x ".join(map(str, var.fitted.shape)))
        placed.append(var)
    by_file = {p: [v for v in variables if v.path == p] for p in files}
    for path, found in by_file.items():
        if found and not any(v.fitted is not None for v in found):
            shapes = ", ".join(f"'{v.name}' ({v.shape_text})" for v in found)
            raise InputError(
                f"no array matches the {grid[0]} x {grid[1]} pixel grid of the other files: "
                f"{shapes}", path=path,
                hint="check that it belongs to the same scene and is not cropped or resampled")
        for v in found:
            if v.fitted is None:
                _LOG.warning("%s (%s) does not match the %d x %d grid; ignored",
                             v.where, v.shape_text, *grid)
    return placed


def _is_label_map(var: _Var) -> bool:
    data = var.fitted
    assert data is not None
    if data.ndim != 2:
        return False
    if data.dtype.kind == "f" and (not np.isfinite(data).all()
                                   or not np.array_equal(data, np.round(data))):
        return False
    if data.min(initial=0) < -1 or data.max(initial=0) > 65535:
        return False
    return np.unique(data).size <= _MAX_LABEL_CLASSES + 2


def _label_array(var: _Var) -> np.ndarray:
    data = np.asarray(var.fitted)
    labels = data.astype(np.int32)
    if (labels < 0).any():
        _LOG.info("%s: %d pixels of value -1 read as unlabelled (0)", var.where,
                  int((labels < 0).sum()))
        labels[labels < 0] = 0
    return labels


def _merge_split(train: _Var, test: _Var) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tr, ts = _label_array(train), _label_array(test)
    both = (tr > 0) & (ts > 0)
    conflict = both & (tr != ts)
    if conflict.any():
        raise InputError(
            f"{int(conflict.sum())} pixels are labelled in both the training map "
            f"{train.where} and the test map '{test.name}' with different classes",
            path=test.path, hint="check that the two maps are the split of one ground truth")
    if both.any():
        _LOG.warning("%d pixels are in both the training map %s and the test map %s",
                     int(both.sum()), train.where, test.where)
    return np.where(tr > 0, tr, ts), tr, ts


def _split_from_full(part: _Var, full: _Var, role: str) -> tuple[np.ndarray, np.ndarray]:
    """The other half of a split given one half and the full ground truth."""
    half, labels = _label_array(part), _label_array(full)
    bad = (half > 0) & (half != labels)
    if bad.any():
        raise InputError(
            f"{int(bad.sum())} pixels of the {role} map '{part.name}' disagree with the "
            f"ground truth {full.where}", path=part.path,
            hint="check that the two maps belong to the same scene")
    return labels, np.where(half > 0, 0, labels)


def _assign_labels(maps: list[_Var], folder: Path) -> dict[str, Any]:
    roles: dict[str, list[_Var]] = {"train": [], "test": [], "all": []}
    for var in maps:
        role = _split_role(var.name) or _split_role(var.path.stem) or "all"
        roles[role].append(var)
    for role in ("train", "test"):
        if len(roles[role]) > 1:
            names = ", ".join(v.where for v in roles[role])
            raise InputError(f"several {role}ing label maps ({names})", path=folder,
                             hint=f"keep one {role}ing map in the folder")
    train = roles["train"][0] if roles["train"] else None
    test = roles["test"][0] if roles["test"] else None
    full = roles["all"]
    if train is not None and test is not None:
        labels, tr, ts = _merge_split(train, test)
        for extra in full:
            if not np.array_equal(_label_array(extra), labels):
                raise InputError(
                    f"besides the split {train.where} + {test.where} there is a label map "
                    f"'{extra.name}' that differs from their union", path=extra.path,
                    hint="remove one of them, or rename the split maps")
        return {"labels": labels, "train": tr, "test": ts, "train_var": train,
                "test_var": test}
    if train is not None or test is not None:
        half = train if train is not None else test
        assert half is not None
        role = "train" if train is not None else "test"
        if len(full) != 1:
            other, example = ("test", "TSLabel.mat") if role == "train" else (
                "training", "TRLabel.mat")
            raise InputError(
                f"found the {role} map {half.where} but no {other} map", path=half.path,
                hint=f"add the {other} map (e.g. {example}) or the full ground truth")
        labels, other_half = _split_from_full(half, full[0], role)
        tr, ts = (_label_array(half), other_half) if role == "train" else (
            other_half, _label_array(half))
        return {"labels": labels, "train": tr, "test": ts, "labels_var": full[0],
                f"{role}_var": half}
    if len(full) > 1:
        names = ", ".join(v.where for v in full)
        raise InputError(
            f"several label maps ({names}) and none is named as a train or test split",
            path=folder, hint="keep one ground-truth map, or name the split maps "
                              "TRLabel.mat and TSLabel.mat")
    if not full:
        raise InputError("no label map (a 2-D integer array) in any .mat file", path=folder,
                         hint="add the ground truth, e.g. TRLabel.mat and TSLabel.mat")
    return {"labels": _label_array(full[0]), "train": None, "test": None,
            "labels_var": full[0]}


def load_mat_folder(folder: str | os.PathLike[str], *, name: str | None = None) -> Dataset:
    """Read a benchmark scene distributed as a folder of MATLAB files.

    Every ``.mat`` file of the folder (not its subfolders) is read, MATLAB v5 with scipy and
    v7.3 (HDF5) with h5py. Each numeric array is then classified by shape and values: the pixel
    grid is the ``(H, W)`` that the 2-D arrays and the cubes agree on; the HSI is the 3-D array
    with the most bands; LiDAR is any other 3-D array with at most 8 channels (MUUFL stores
    ``(H, W, 2)``) and any 2-D array with non-integer values or a LiDAR-like name (lidar, dsm,
    dem, chm, elevation, height); label maps are the other 2-D integer-valued arrays (-1 is read
    as unlabelled). A training and a test map are told apart by their variable name, else their
    file name (``TRLabel``/``tr``/``train`` vs ``TSLabel``/``ts``/``te``/``test``); a single
    unsplit map is the full ground truth. v7.3 arrays are read in MATLAB's axis order; an array
    that only fits the grid the other way round is transposed (logged).

    Args:
        folder: the folder with the .mat files.
        name: the dataset's name; defaults to the folder's name.

    Returns:
        The dataset; ``class_names`` are filled in when :func:`identify` recognises one of the
        paper's datasets.

    Raises:
        InputError: when the folder or its files cannot be read, no HSI or label map is found,
            a file's arrays do not match the grid of the others, variables are ambiguous, or
            train and test maps give one pixel different classes.
        DiffclipError: when scipy or h5py is not installed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("is not a folder", path=folder,
                         hint="give the folder that holds HSI.mat, LiDAR.mat and the label maps")
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".mat"),
                   key=lambda p: p.name.lower())
    if not files:
        raise InputError("holds no .mat file", path=folder,
                         hint="give the folder that holds HSI.mat, LiDAR.mat and the label maps")
    variables = [v for path in files for v in _read_mat(path)]
    for path in files:
        if not any(v.path == path for v in variables):
            _LOG.warning("%s: no numeric 2-D or 3-D array; ignored", path)
    grid = _choose_grid(variables, folder)
    placed = _place(variables, grid, files)

    cubes = [v for v in placed if v.fitted is not None and v.fitted.ndim == 3]
    hsi_candidates = [v for v in cubes if _kind_hint(v) != "lidar"]
    if not hsi_candidates:
        found = ", ".join(f"{v.where} ({v.shape_text})" for v in placed)
        raise InputError(
            f"no hyperspectral cube (a 3-D array) on the {grid[0]} x {grid[1]} grid; found "
            f"{found}", path=folder, hint="add the HSI file (e.g. HSI.mat)")
    most = max(v.fitted.shape[0] for v in hsi_candidates)  # type: ignore[union-attr]
    top = [v for v in hsi_candidates if v.fitted.shape[0] == most]  # type: ignore[union-attr]
    if len(top) > 1:
        named = [v for v in top if _kind_hint(v) == "hsi"]
        if len(named) != 1:
            raise InputError(
                f"cannot tell which cube is the HSI: {', '.join(v.where for v in top)} all "
                f"have {most} bands", path=folder, hint="keep one HSI file in the folder")
        top = named
    hsi_var = top[0]

    lidar_vars: list[_Var] = []
    maps: list[_Var] = []
    for var in placed:
        if var is hsi_var:
            continue
        data = var.fitted
        assert data is not None
        if data.ndim == 3:
            if data.shape[0] > _MAX_LIDAR_CHANNELS and _kind_hint(var) != "lidar":
                raise InputError(
                    f"a second cube '{var.name}' with {data.shape[0]} bands besides the HSI "
                    f"{hsi_var.where}", path=var.path,
                    hint="keep one HSI cube in the folder; LiDAR has at most "
                         f"{_MAX_LIDAR_CHANNELS} channels")
            lidar_vars.append(var)
        elif _kind_hint(var) == "lidar" or not _is_label_map(var):
            lidar_vars.append(var)
        else:
            maps.append(var)
    split = _assign_labels(maps, folder)
    if not (split["labels"] > 0).any():
        where = split.get("labels_var") or split.get("train_var")
        raise InputError("the label map has no labelled pixel (all 0)",
                         path=where.path if where else folder,
                         hint="check that this is the ground truth, classes numbered from 1")

    sources: dict[str, Path] = {"hsi": hsi_var.path}
    variables_used: dict[str, str] = {"hsi": hsi_var.name}
    lidar = None
    if lidar_vars:
        channels = []
        for k, var in enumerate(lidar_vars):
            role = "lidar" if k == 0 else f"lidar.{k}"
            sources[role], variables_used[role] = var.path, var.name
            data = np.asarray(var.fitted, dtype=np.float32)
            channels.append(data[None] if data.ndim == 2 else data)
        lidar = np.concatenate(channels, axis=0)
        if len(lidar_vars) > 1:
            _LOG.info("LiDAR stacked from %s", ", ".join(v.where for v in lidar_vars))
    for role in ("labels", "train", "test"):
        role_var = split.get(f"{role}_var")
        if role_var is not None:
            sources[role], variables_used[role] = role_var.path, role_var.name

    dataset = Dataset(
        name=name or folder.resolve().name,
        hsi=np.asarray(hsi_var.fitted, dtype=np.float32),
        lidar=lidar,
        labels=split["labels"],
        train_labels=split["train"],
        test_labels=split["test"],
        sources=sources,
        variables=variables_used,
    )
    key = identify(dataset)
    if key is not None:
        names = KNOWN_DATASETS[key].class_names
        if max(dataset.class_ids, default=0) <= len(names):
            dataset.class_names = list(names)
    _LOG.info("%s: %d x %d px, %d HSI bands, %d LiDAR channels, %d labelled pixels%s%s",
              dataset.name, *dataset.shape, dataset.hsi_bands, dataset.lidar_bands,
              int((dataset.labels > 0).sum()), ", standard split" if dataset.has_split else "",
              f", recognised as {key}" if key else "")
    return dataset


# --------------------------------------------------------------------------------------------
# Writing a dataset as GeoTIFFs
# --------------------------------------------------------------------------------------------


def write_geotiffs(
    dataset: Dataset,
    folder: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Store a dataset as GeoTIFFs and a classes table, readable like any other scene.

    Files: ``hsi.tif`` (float32), ``lidar.tif`` (float32, when the dataset has LiDAR),
    ``labels.tif`` (uint16, nodata 0), ``train.tif`` and ``test.tif`` (when it has a split)
    and ``classes.csv`` (``id,name,description,color``). The rasters are on a pixel grid like
    the embedded Salinas-A scene: no CRS, 1 unit = 1 pixel, origin at the top-left corner
    (transform ``(1, 0, 0, 0, -1, H)``).

    Args:
        dataset: the dataset.
        folder: the output folder (created if missing).
        overwrite: whether existing files may be replaced.

    Returns:
        The paths written, keyed ``hsi``, ``lidar``, ``labels``, ``train``, ``test``,
        ``classes`` (only those written).

    Raises:
        OutputError: when a file exists (without ``overwrite``) or cannot be written.
    """
    import rasterio
    from affine import Affine

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = dataset.shape
    profile: dict[str, Any] = {
        "driver": "GTiff", "height": h, "width": w, "crs": None,
        "transform": Affine(1.0, 0.0, 0.0, 0.0, -1.0, float(h)), "compress": "deflate",
    }
    if h >= 256 and w >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)

    def write(key: str, data: np.ndarray, descriptions: list[str], **extra: Any) -> None:
        path = folder / f"{key}.tif"
        with atomic_path(path, overwrite=overwrite) as tmp, rasterio.open(
                tmp, "w", count=data.shape[0], dtype=data.dtype, **profile, **extra) as dst:
            dst.write(data)
            dst.descriptions = tuple(descriptions)
        paths[key] = path

    classes = dataset.classes()  # checks the class ids before anything is written
    paths: dict[str, Path] = {}
    write("hsi", dataset.hsi, [f"band {i + 1}" for i in range(dataset.hsi_bands)],
          predictor=3)
    if dataset.lidar is not None:
        write("lidar", dataset.lidar,
              ["DSM" if i == 0 else f"lidar {i + 1}" for i in range(dataset.lidar_bands)],
              predictor=3)
    label_maps = {"labels": dataset.labels, "train": dataset.train_labels,
                  "test": dataset.test_labels}
    for key, data in label_maps.items():
        if data is not None:
            write(key, data[None].astype(np.uint16), [key], nodata=0)
    classes_path = folder / "classes.csv"
    with atomic_path(classes_path, overwrite=overwrite) as tmp:
        classes.to_csv(tmp)
    paths["classes"] = classes_path
    return paths
