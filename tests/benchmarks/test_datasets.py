"""Reading the paper's datasets from MATLAB folders, recognising them, exporting GeoTIFFs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import scipy.io

from benchmarks.datasets import (
    KNOWN_DATASETS,
    Dataset,
    identify,
    load_mat_folder,
    paper_provenance,
    paper_rows,
    write_geotiffs,
)
from diffclip_cli.errors import DiffclipError, InputError, OutputError
from diffclip_cli.io.classes import ClassTable

H, W, C = 12, 10, 9


def scene(seed: int = 0, *, lidar_channels: int = 1):
    """HSI (H, W, C), LiDAR (H, W[, L]) and disjoint train/test maps, MATLAB's axis order."""
    rng = np.random.default_rng(seed)
    hsi = rng.random((H, W, C))
    lidar = 10 * rng.random((H, W, lidar_channels)) if lidar_channels > 1 else 10 * rng.random(
        (H, W))
    full = rng.integers(0, 4, (H, W))
    pick = rng.random((H, W)) < 0.3
    train = np.where(pick, full, 0).astype(np.uint8)
    test = np.where(pick, 0, full).astype(np.uint8)
    return hsi, lidar, train, test


def save_v5(path: Path, **arrays) -> None:
    scipy.io.savemat(path, arrays)


def save_v73(path: Path, *, transpose: bool = True, matlab: bool = True, **arrays) -> None:
    """An HDF5 .mat file as MATLAB 7.3 writes it: column-major, so the axes are reversed."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, arr in arrays.items():
            ds = f.create_dataset(name, data=arr.T if transpose else arr)
            if matlab:
                ds.attrs["MATLAB_class"] = np.bytes_("double")
    if matlab:
        with open(path, "r+b") as fh:
            fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan 1 2024 HDF5")


def paper_folder(folder: Path, *, writer=save_v5, seed: int = 0) -> tuple[np.ndarray, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    hsi, lidar, train, test = scene(seed)
    writer(folder / "HSI.mat", HSI=hsi)
    writer(folder / "LiDAR.mat", LiDAR=lidar)
    writer(folder / "TRLabel.mat", TRLabel=train)
    writer(folder / "TSLabel.mat", TSLabel=test)
    return hsi, lidar, train, test


def assert_loaded(ds: Dataset, hsi, lidar, train, test) -> None:
    assert ds.hsi.dtype == np.float32 and ds.labels.dtype == np.int32
    np.testing.assert_allclose(ds.hsi, np.moveaxis(hsi, 2, 0).astype(np.float32))
    lid = lidar[None] if lidar.ndim == 2 else np.moveaxis(lidar, 2, 0)
    np.testing.assert_allclose(ds.lidar, lid.astype(np.float32))
    np.testing.assert_array_equal(ds.train_labels, train)
    np.testing.assert_array_equal(ds.test_labels, test)
    np.testing.assert_array_equal(ds.labels, np.where(train > 0, train, test))


def test_v5_paper_layout(tmp_path):
    arrays = paper_folder(tmp_path / "Houston")
    ds = load_mat_folder(tmp_path / "Houston")
    assert_loaded(ds, *arrays)
    assert ds.name == "Houston" and ds.has_split and ds.shape == (H, W)
    assert ds.hsi_bands == C and ds.lidar_bands == 1
    assert ds.sources["train"].name == "TRLabel.mat" and ds.variables["test"] == "TSLabel"
    assert ds.class_names is None  # 3 classes on a 12 x 10 grid is none of the paper's
    assert ds.classes().ids == [1, 2, 3]


def test_v73_transposed_files(tmp_path):
    arrays = paper_folder(tmp_path / "d", writer=save_v73, seed=1)
    with h5py.File(tmp_path / "d" / "HSI.mat") as f:
        assert f["HSI"].shape == (C, W, H)  # really stored the MATLAB way round
    assert_loaded(load_mat_folder(tmp_path / "d", name="x"), *arrays)


def test_mixed_versions_and_untransposed_hdf5_detected(tmp_path, caplog):
    folder = tmp_path / "mixed"
    folder.mkdir()
    hsi, lidar, train, test = scene(2)
    save_v5(folder / "HSI.mat", HSI=hsi)
    # A converter that forgot MATLAB's column-major order: the (H, W) does not match as stored.
    save_v73(folder / "LiDAR.mat", LiDAR=lidar, transpose=False)
    save_v73(folder / "TRLabel.mat", TRLabel=train)
    # A plain HDF5 file (no MATLAB header or attributes) keeps numpy's order.
    save_v73(folder / "TSLabel.mat", TSLabel=test, transpose=False, matlab=False)
    with caplog.at_level(logging.INFO, logger="diffclip"):
        ds = load_mat_folder(folder)
    assert_loaded(ds, hsi, lidar, train, test)
    assert any("LiDAR.mat:LiDAR: stored in the other axis order" in r.message
               for r in caplog.records)


def test_muufl_style_two_lidar_channels_and_split_in_one_file(tmp_path):
    folder = tmp_path / "Muufl"
    folder.mkdir()
    hsi, lidar, train, test = scene(3, lidar_channels=2)
    save_v5(folder / "hsi.mat", HSI=hsi)
    save_v5(folder / "lidar.mat", lidar=lidar)
    save_v5(folder / "train_test_gt.mat", trainlabels=train.astype(float),
            testlabels=test.astype(float))
    ds = load_mat_folder(folder)
    assert ds.lidar.shape == (2, H, W)
    assert_loaded(ds, hsi, lidar, train, test)
    assert ds.variables["train"] == "trainlabels"


def test_single_gt_folder_with_minus_one_background(tmp_path):
    folder = tmp_path / "scene"
    folder.mkdir()
    hsi, lidar, train, test = scene(4)
    gt = np.where(train > 0, train, test).astype(float)
    gt[gt == 0] = -1  # MUUFL's original ground truth marks unlabelled pixels -1
    save_v5(folder / "data_hsi.mat", cube=hsi)
    save_v5(folder / "dsm.mat", z=lidar)
    save_v5(folder / "gt.mat", gt=gt)
    ds = load_mat_folder(folder)
    assert not ds.has_split and ds.train_labels is None and ds.test_labels is None
    np.testing.assert_array_equal(ds.labels, np.where(gt < 0, 0, gt))
    np.testing.assert_allclose(ds.lidar[0], lidar.astype(np.float32))


def test_odd_names_trento_style_and_name_identification(tmp_path):
    # The tyust-dayu Trento layout: every variable is called 'data', the split is in allgrd.mat.
    folder = tmp_path / "Trento"
    folder.mkdir()
    rng = np.random.default_rng(5)
    hsi = rng.random((H, W, C))
    lidar = rng.random((H, W, 2)) * 5
    full = np.tile(np.arange(1, 7), H * W // 6 + 1)[: H * W].reshape(H, W)
    pick = rng.random((H, W)) < 0.2
    save_v5(folder / "Italy_hsi.MAT", data=hsi, wavelengths=np.linspace(400, 990, C),
            sensor="AISA Eagle")
    save_v5(folder / "Italy_lidar.mat", data=lidar)
    save_v5(folder / "allgrd.mat", mask_train=np.where(pick, full, 0),
            mask_test=np.where(pick, 0, full))
    ds = load_mat_folder(folder)
    np.testing.assert_allclose(ds.hsi, np.moveaxis(hsi, 2, 0).astype(np.float32))
    assert ds.lidar.shape == (2, H, W)
    np.testing.assert_array_equal(ds.labels, full)
    np.testing.assert_array_equal(ds.train_labels, np.where(pick, full, 0))
    # Not Trento's grid, but the folder is named Trento and it has Trento's 6 classes.
    assert identify(ds) == "trento"
    assert ds.class_names == list(KNOWN_DATASETS["trento"].class_names)
    assert ds.classes().names[:2] == ["Apple trees", "Buildings"]


def test_split_half_plus_full_ground_truth(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    hsi, _, train, test = scene(6)
    save_v5(folder / "HSI.mat", HSI=hsi)
    save_v5(folder / "gt.mat", gt=np.where(train > 0, train, test))
    save_v5(folder / "train.mat", map=train)
    ds = load_mat_folder(folder)
    assert ds.lidar is None
    np.testing.assert_array_equal(ds.test_labels, test)
    np.testing.assert_array_equal(ds.train_labels, train)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="is not a folder"):
        load_mat_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: holds no \.mat file"):
        load_mat_folder(tmp_path / "empty")

    paper_folder(tmp_path / "nohsi")
    (tmp_path / "nohsi" / "HSI.mat").unlink()
    with pytest.raises(InputError, match="no hyperspectral cube") as err:
        load_mat_folder(tmp_path / "nohsi")
    assert str(tmp_path / "nohsi") in str(err.value) and "HSI.mat" in str(err.value)

    paper_folder(tmp_path / "crop")
    save_v5(tmp_path / "crop" / "LiDAR.mat", LiDAR=np.ones((H - 2, W)))
    with pytest.raises(InputError, match=r"LiDAR\.mat: no array matches the 12 x 10 pixel grid"
                                         r".*'LiDAR' \(10 x 10\)"):
        load_mat_folder(tmp_path / "crop")

    paper_folder(tmp_path / "clash")
    _, _, train, test = scene(0)
    clash = test.copy()
    r, c = np.argwhere(train > 0)[0]
    clash[r, c] = 1 + train[r, c] % 3
    save_v5(tmp_path / "clash" / "TSLabel.mat", TSLabel=clash)
    with pytest.raises(InputError, match=r"TSLabel\.mat: 1 pixels are labelled in both"):
        load_mat_folder(tmp_path / "clash")

    paper_folder(tmp_path / "two")
    (tmp_path / "two" / "TSLabel.mat").unlink()
    (tmp_path / "two" / "TRLabel.mat").unlink()
    save_v5(tmp_path / "two" / "gt_a.mat", gt=train)
    save_v5(tmp_path / "two" / "gt_b.mat", gt=test)
    with pytest.raises(InputError, match="several label maps"):
        load_mat_folder(tmp_path / "two")

    paper_folder(tmp_path / "half")
    (tmp_path / "half" / "TSLabel.mat").unlink()
    with pytest.raises(InputError, match=r"TRLabel\.mat: found the train map .* no test map"):
        load_mat_folder(tmp_path / "half")

    paper_folder(tmp_path / "twocubes")
    save_v5(tmp_path / "twocubes" / "HSI2.mat", HSI=np.zeros((H, W, C)))
    with pytest.raises(InputError, match="cannot tell which cube is the HSI"):
        load_mat_folder(tmp_path / "twocubes")

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "HSI.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(InputError, match=r"HSI\.mat: cannot be read as a MATLAB file"):
        load_mat_folder(tmp_path / "junk")


def test_missing_optional_dependency_says_how_to_install(tmp_path, monkeypatch):
    paper_folder(tmp_path / "d")
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(DiffclipError, match=r"pip install 'diffclip\[bench\]'"):
        load_mat_folder(tmp_path / "d")


def test_identify_by_grid_and_bands():
    h, w = KNOWN_DATASETS["trento"].height, KNOWN_DATASETS["trento"].width
    labels = np.zeros((h, w), np.int32)
    labels[:6, 0] = np.arange(1, 7)
    ds = Dataset("whatever", np.zeros((63, h, w), np.float32), np.zeros((1, h, w)), labels)
    assert identify(ds) == "trento"
    labels[0, 1] = 7  # more classes than Trento has
    assert identify(ds) is None
    other = Dataset("x", np.zeros((63, 20, 30)), None, np.ones((20, 30)))
    assert identify(other) is None
    muufl = Dataset("MUUFL Gulfport crop", np.zeros((64, 20, 30)), None,
                    np.arange(20 * 30).reshape(20, 30) % 11 + 1)
    assert identify(muufl) == "muufl"


def test_dataset_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match="lidar must be"):
        Dataset("x", np.zeros((3, 4, 5)), np.zeros((1, 4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="both train_labels and test_labels"):
        Dataset("x", np.zeros((3, 4, 5)), None, np.zeros((4, 5)), train_labels=np.zeros((4, 5)))


def test_paper_rows_from_packaged_table():
    rows = paper_rows("trento", 20)
    assert [r["method"] for r in rows][-1] == "DiffCLIP" and len(rows) == 7
    diffclip = rows[-1]
    assert diffclip == {"shots": 20, "method": "DiffCLIP", "dataset": "trento", "oa": 98.60,
                        "aa": 97.90, "kappa": 98.13}
    assert len(paper_rows("houston2013")) == 21
    assert paper_rows("muufl", 5) == []
    assert "Table 1" in paper_provenance()
    rows[0]["oa"] = 0.0  # callers get copies
    assert paper_rows("trento", 20)[0]["oa"] != 0.0
    with pytest.raises(ValueError, match="unknown dataset"):
        paper_rows("indian_pines", 2)
    # Every known dataset has rows for every published shot count.
    for key in KNOWN_DATASETS:
        assert {r["shots"] for r in paper_rows(key)} == {2, 8, 20}


def test_write_geotiffs_round_trip(tmp_path):
    hsi, lidar, train, test = paper_folder(tmp_path / "in")
    lidar = lidar.astype(np.float32)[None]
    ds = load_mat_folder(tmp_path / "in")
    ds.class_names = ["grass", "road", "roof"]
    paths = write_geotiffs(ds, tmp_path / "out")
    assert set(paths) == {"hsi", "lidar", "labels", "train", "test", "classes"}
    with rasterio.open(paths["hsi"]) as src:
        assert src.count == C and src.crs is None and src.dtypes[0] == "float32"
        assert tuple(src.transform)[:6] == (1.0, 0.0, 0.0, 0.0, -1.0, float(H))
        np.testing.assert_array_equal(src.read(), np.moveaxis(hsi, 2, 0).astype(np.float32))
    with rasterio.open(paths["lidar"]) as src:
        np.testing.assert_array_equal(src.read(), lidar)
        assert src.descriptions == ("DSM",)
    for key, expected in (("labels", ds.labels), ("train", train), ("test", test)):
        with rasterio.open(paths[key]) as src:
            assert src.nodata == 0 and src.dtypes[0] == "uint16"
            np.testing.assert_array_equal(src.read(1), expected)
    table = ClassTable.from_csv(paths["classes"])
    assert table.ids == [1, 2, 3] and table.names == ["grass", "road", "roof"]
    with pytest.raises(OutputError, match="already exists"):
        write_geotiffs(ds, tmp_path / "out")
    no_split = Dataset("n", ds.hsi, None, ds.labels)
    paths = write_geotiffs(no_split, tmp_path / "out", overwrite=True)
    assert set(paths) == {"hsi", "labels", "classes"}
    assert not any(p.name.startswith(".diffclip-tmp-") for p in (tmp_path / "out").iterdir())
