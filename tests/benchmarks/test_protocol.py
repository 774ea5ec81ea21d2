"""The paper's few-shot protocol on generated .mat files of the paper's layout."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from scenes import make_scene

from benchmarks import protocol
from benchmarks.ablations import ablation_preset
from benchmarks.datasets import load_mat_folder, paper_rows
from benchmarks.protocol import (
    ProtocolConfig,
    inputs_from_dataset,
    inputs_from_files,
    read_runs,
    run_protocol,
    summary_markdown,
)
from diffclip_cli.errors import LabelError, OutputError
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.rng import make_generator

TINY = load_preset("tiny").with_overrides(
    **{"pretrain.epochs": 1, "finetune.epochs": 3, "finetune.milestones": [2]})
SHOTS = (2, 5)
SEEDS = (0, 1)
METHODS = ("diffclip", "clip", "rf")


def _paper_folder(folder: Path) -> dict[str, np.ndarray]:
    """HSI.mat, LiDAR.mat, TRLabel.mat, TSLabel.mat of a generated scene, MATLAB axis order."""
    syn = make_scene(height=20, width=22, hsi_bands=6, lidar_bands=1, n_spectra=2,
                     n_heights=2, patch_size=7, seed=3, crs=None)
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(syn.labels.shape) < 0.6, syn.labels, 0)  # some unlabelled
    to_train = rng.random(labels.shape) < 0.3
    train = np.where(to_train, labels, 0).astype(np.uint8)
    test = np.where(to_train, 0, labels).astype(np.uint8)
    folder.mkdir(parents=True)
    scipy.io.savemat(folder / "HSI.mat", {"HSI": np.moveaxis(syn.hsi, 0, -1).astype(float)})
    scipy.io.savemat(folder / "LiDAR.mat", {"LiDAR": syn.lidar[0].astype(float)})
    scipy.io.savemat(folder / "TRLabel.mat", {"TRLabel": train})
    scipy.io.savemat(folder / "TSLabel.mat", {"TSLabel": test})
    return {"hsi": syn.hsi, "lidar": syn.lidar, "labels": labels, "train": train, "test": test}


def _pixels(rows: np.ndarray, cols: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(rows.tolist(), cols.tolist(), strict=True))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mat") / "generated"
    arrays = _paper_folder(folder)
    return folder, arrays


@pytest.fixture(scope="module")
def run(scene, tmp_path_factory):
    """The protocol with the tiny preset; records what each method trained on."""
    folder, arrays = scene
    work = tmp_path_factory.mktemp("protocol")
    seen: list[dict] = []
    patch = pytest.MonkeyPatch()
    fewshot, forest = protocol.fewshot_scene, protocol.random_forest

    def spy_fewshot(scene, labels, request, **kw):
        res = fewshot(scene, labels, request, **kw)
        seen.append({"method": kw["provenance"]["protocol"]["method"], "shots": request.shots,
                     "seed": request.seed, "train": _pixels(res.labels.rows[res.split.train],
                                                          res.labels.cols[res.split.train])})
        return res

    def spy_forest(x_train, y_train, x_test, *, seed):
        seen.append({"method": "rf", "seed": seed, "x_train": x_train, "y_train": y_train})
        return forest(x_train, y_train, x_test, seed=seed)

    patch.setattr(protocol, "fewshot_scene", spy_fewshot)
    patch.setattr(protocol, "random_forest", spy_forest)
    events = []
    try:
        inputs = inputs_from_dataset(load_mat_folder(folder), work / "data")
        config = ProtocolConfig(preset=TINY, shots=SHOTS, seeds=len(SEEDS), methods=METHODS,
                                pretrain_samples=48)
        result = run_protocol(inputs, work / "out", config=config, progress=events.append)
    finally:
        patch.undo()
    return {"out": work / "out", "inputs": inputs, "config": config, "result": result,
            "seen": seen, "events": events, "arrays": arrays}


def test_csv_has_one_row_per_run_and_pretraining_is_shared_across_k(run):
    rows = read_runs(run["out"] / "runs.csv")
    keys = sorted((r["method"], r["shots"], r["seed"]) for r in rows)
    assert keys == sorted((m, str(k), s) for m in METHODS for k in SHOTS for s in SEEDS)
    labelled = int((run["arrays"]["labels"] > 0).sum())
    for r in rows:
        assert r["dataset"] == "generated" and r["mode"] == "random"
        assert r["n_train"] == 4 * int(r["shots"])  # 4 classes
        assert r["n_train"] + r["n_test"] == labelled
        assert 0 <= r["oa"] <= 100 and r["device"].startswith("cpu")
    # one pretraining per seed, used by diffclip for every k; clip and rf have none
    pre = {(r["method"], r["seed"]): r["pretrain_id"] for r in rows}
    assert {pre[("diffclip", s)] for s in SEEDS} == {"method-s0", "method-s1"}
    pre_rows = [r for r in rows if r["method"] == "diffclip"]
    for seed in SEEDS:
        times = {r["pretrain_s"] for r in pre_rows if r["seed"] == seed}
        assert len(times) == 1
    assert all(not r["pretrain_id"] for r in rows if r["method"] != "diffclip")
    pretrain_events = [e for e in run["events"] if e.kind == "pretrain"]
    assert {(e.seed, e.variant) for e in pretrain_events} == {(0, "method"), (1, "method")}
    assert [e.done for e in run["events"] if e.kind == "run"] == list(range(1, 13))


def test_test_set_is_every_labelled_pixel_not_in_the_shots(run):
    labels = run["arrays"]["labels"]
    all_labelled = _pixels(*np.nonzero(labels))
    for k in SHOTS:
        for seed in SEEDS:
            split = np.load(run["out"] / "splits" / f"k{k}_s{seed}.npz")
            train = _pixels(split["train_rows"], split["train_cols"])
            test = _pixels(split["test_rows"], split["test_cols"])
            assert not train & test
            assert train | test == all_labelled
            assert np.bincount(split["train_ids"]).tolist() == [0] + [k] * 4
            np.testing.assert_array_equal(
                split["test_ids"], labels[split["test_rows"], split["test_cols"]])
            for method in METHODS:
                report = json.loads((run["out"] / "reports" / f"{method}_k{k}_s{seed}.json")
                                    .read_text())
                assert report["n_pixels"] == len(test)
                support = {c["id"]: c["support"] for c in report["per_class"]}
                counts = np.bincount(split["test_ids"], minlength=5)
                assert support == {c: int(counts[c]) for c in range(1, 5)}


def test_same_seed_same_shots_across_methods(run):
    hsi, lidar = run["arrays"]["hsi"], run["arrays"]["lidar"]
    neural = {(s["method"], s["shots"], s["seed"]): s["train"] for s in run["seen"]
              if "train" in s}
    forest = [s for s in run["seen"] if s["method"] == "rf"]
    assert len(neural) == 8 and len(forest) == 4
    for k in SHOTS:
        for seed in SEEDS:
            split = np.load(run["out"] / "splits" / f"k{k}_s{seed}.npz")
            shots = _pixels(split["train_rows"], split["train_cols"])
            assert neural[("diffclip", k, seed)] == shots == neural[("clip", k, seed)]
        # another seed draws other shots
        assert neural[("diffclip", k, 0)] != neural[("diffclip", k, 1)]
    # the forest was fitted on exactly those pixels' HSI + LiDAR values (runs in k, seed order)
    for rec, (seed, k) in zip(forest, [(s, k) for s in SEEDS for k in SHOTS], strict=True):
        split = np.load(run["out"] / "splits" / f"k{k}_s{seed}.npz")
        r, c = split["train_rows"], split["train_cols"]
        expect = np.concatenate([hsi[:, r, c].T, lidar[:, r, c].T], axis=1)
        assert rec["seed"] == seed
        np.testing.assert_allclose(rec["x_train"], expect, rtol=1e-6)
        np.testing.assert_array_equal(rec["y_train"], split["train_ids"])


def test_summary_is_mean_and_std_of_the_csv(run):
    rows = read_runs(run["out"] / "runs.csv")
    summary = json.loads((run["out"] / "summary.json").read_text())["summary"]
    markdown = (run["out"] / "summary.md").read_text()
    assert len(summary) == len(METHODS) * len(SHOTS)
    for entry in summary:
        mine = [r for r in rows if (r["method"], r["shots"]) == (entry["method"],
                                                                 entry["shots"])]
        assert entry["n_runs"] == len(mine) == len(SEEDS)
        for key in ("oa", "aa", "kappa"):
            values = np.array([r[key] for r in mine])
            assert entry[key]["mean"] == pytest.approx(values.mean(), abs=1e-3)
            assert entry[key]["std"] == pytest.approx(values.std(), abs=1e-3)
        oa = entry["oa"]
        assert (f"| {entry['method']} | {entry['shots']} | {len(SEEDS)} | "
                f"{oa['mean']:.2f} ± {oa['std']:.2f} |") in markdown
    assert "shared by every k" in markdown and "Device: cpu" in markdown
    assert "paper OA" not in markdown and "Table 1" not in markdown  # not a paper dataset


def test_paper_rows_side_by_side_for_a_known_dataset(run, scene, tmp_path, monkeypatch):
    folder, _ = scene
    monkeypatch.setattr(protocol, "identify", lambda ds: "trento")
    inputs = inputs_from_dataset(load_mat_folder(folder), tmp_path / "data")
    assert inputs.paper_key == "trento"
    records = read_runs(run["out"] / "runs.csv")
    summary = protocol.summarize_runs(run["out"], records, paper_key="trento")
    text = summary_markdown(summary, records, dataset="generated", config=run["config"],
                            paper_key="trento", device="cpu")
    published = {r["method"]: r for r in paper_rows("trento", 2)}
    ours = next(e for e in summary if (e["method"], e["shots"]) == ("diffclip", "2"))
    assert ours["paper"]["oa"] == published["DiffCLIP"]["oa"]
    line = next(ln for ln in text.splitlines() if ln.startswith("| diffclip | 2 |"))
    assert line.endswith(f" {published['DiffCLIP']['oa']:.2f} | {published['DiffCLIP']['aa']:.2f}"
                         f" | {published['DiffCLIP']['kappa']:.2f} |")
    line = next(ln for ln in text.splitlines() if ln.startswith("| clip | 2 |"))
    assert f" {published['CLIP']['oa']:.2f} |" in line
    # the paper's other methods, for the shot counts it ran (2, not 5)
    assert f"| 2 | HIPL | {published['HIPL']['oa']:.2f} |" in text
    assert "\n| 5 | " not in text
    # the baselines have no published row of their own
    assert next(ln for ln in text.splitlines() if ln.startswith("| rf | 2 |")).endswith(
        "| | | |")


def test_resume_skips_finished_runs_and_refuses_other_settings(run):
    events = []
    again = run_protocol(run["inputs"], run["out"], config=run["config"],
                         progress=events.append)
    assert again.skipped == 12 and {e.kind for e in events} == {"skip"}
    assert len(read_runs(run["out"] / "runs.csv")) == 12
    other = dataclasses.replace(run["config"], pretrain_samples=49)
    with pytest.raises(OutputError, match="pretrain_samples"):
        run_protocol(run["inputs"], run["out"], config=other)


def test_fixed_split_uses_the_standard_maps_as_given(scene, tmp_path):
    folder, arrays = scene
    inputs = inputs_from_dataset(load_mat_folder(folder), tmp_path / "data")
    config = ProtocolConfig(preset=TINY, shots=(0, 2), seeds=(3,), methods=("rf",),
                            mode="fixed")
    result = run_protocol(inputs, tmp_path / "out", config=config)
    train_map = _pixels(*np.nonzero(arrays["train"]))
    test_map = _pixels(*np.nonzero(arrays["test"]))
    whole = np.load(tmp_path / "out" / "splits" / "kall_s3.npz")
    assert _pixels(whole["train_rows"], whole["train_cols"]) == train_map
    assert _pixels(whole["test_rows"], whole["test_cols"]) == test_map
    two = np.load(tmp_path / "out" / "splits" / "k2_s3.npz")
    assert _pixels(two["train_rows"], two["train_cols"]) <= train_map
    assert np.bincount(two["train_ids"]).tolist() == [0, 2, 2, 2, 2]
    assert _pixels(two["test_rows"], two["test_cols"]) == test_map
    rows = {r["shots"]: r for r in result.records}
    assert rows["all"]["n_train"] == len(train_map) and rows["2"]["n_test"] == len(test_map)
    assert "fixed standard split" in result.markdown
    with pytest.raises(LabelError, match="training and a test map"):
        run_protocol(dataclasses.replace(inputs, train=None, test=None), tmp_path / "o2",
                     config=config)


def test_ablations_run_on_their_own_pretraining(scene, tmp_path):
    folder, _ = scene
    inputs = inputs_from_dataset(load_mat_folder(folder), tmp_path / "data")
    config = ProtocolConfig(preset=TINY, shots=(2,), seeds=(0,), pretrain_samples=32,
                            methods=("diffclip", "no-text", "no-diffusion", "no-mask"))
    result = run_protocol(inputs, tmp_path / "out", config=config)
    pid = {r["method"]: r["pretrain_id"] for r in result.records}
    assert pid == {"diffclip": "method-s0", "no-text": "method-s0",
                   "no-diffusion": "no-diffusion-s0", "no-mask": "no-mask-s0"}
    assert all(r["n_test"] == result.records[0]["n_test"] for r in result.records)
    assert set(result.pretrainings) == {"method-s0", "no-diffusion-s0", "no-mask-s0"}
    assert not (tmp_path / "out" / "models").exists()  # not kept unless asked


def test_inputs_need_labels():
    with pytest.raises(LabelError):
        inputs_from_files("hsi.tif")
    with pytest.raises(LabelError, match="both"):
        inputs_from_files("hsi.tif", labels="l.tif", train="tr.tif")
    with pytest.raises(ValueError, match="unknown methods"):
        ProtocolConfig(preset=TINY, methods=("diffclip", "gpt"))
    with pytest.raises(ValueError, match="fixed mode only"):
        ProtocolConfig(preset=TINY, shots=(0, 2))


# ----------------------------------------------------------------------- ablation switches


def _pretrain_step(config, hsi, lidar):
    """One pretraining loss; returns the output and what the token embedding was given."""
    net = DiffCLIPNet(config, hsi_bands=hsi.shape[1], lidar_bands=lidar.shape[1], seed=0)
    inputs: dict[str, torch.Tensor] = {}
    tokens = net.tokens

    def spy_tokens(x: torch.Tensor, modality: str) -> torch.Tensor:
        inputs[modality] = x.detach()
        return tokens(x, modality)

    net.tokens = spy_tokens
    sequences: list[torch.Tensor] = []
    encode = net.encode
    net.encode = lambda s: sequences.append(s.detach()) or encode(s)
    out = net.pretrain_loss(hsi, lidar, generator=make_generator(5, "pretrain"))
    return out, inputs, sequences[0]


def test_ablation_switches_change_the_pretraining_as_intended():
    model = TINY.model
    assert model.masking and model.diffusion  # the presets keep the method
    assert load_preset("paper").model.masking and load_preset("paper").model.diffusion
    assert ablation_preset(TINY, "method") is TINY
    hsi, lidar = torch.randn(4, 6, 5, 5), torch.randn(4, 1, 5, 5)
    p = model.tokens

    default, seen, seq = _pretrain_step(model, hsi, lidar)
    assert (default.timesteps > 0).any()
    assert not torch.allclose(seen["hsi"], hsi)  # noised
    assert seq.shape[1] == 1 + model.kept_tokens < 1 + p

    no_diff = ablation_preset(TINY, "no-diffusion").model
    out, seen, seq = _pretrain_step(no_diff, hsi, lidar)
    assert not no_diff.diffusion and no_diff.masking
    assert torch.equal(out.timesteps, torch.zeros(4, dtype=torch.long))  # no t
    assert torch.equal(seen["hsi"], hsi) and torch.equal(seen["lidar"], lidar)  # no noise
    for m in ("hsi", "lidar"):  # the same masks as the method's
        assert torch.equal(out.masks[m], default.masks[m])
    assert seq.shape[1] == 1 + model.kept_tokens

    no_mask = ablation_preset(TINY, "no-mask").model
    out, seen, seq = _pretrain_step(no_mask, hsi, lidar)
    assert no_mask.diffusion and not no_mask.masking and no_mask.kept_tokens == p
    assert not any(bool(k.any()) for k in out.masks.values())  # every token visible
    assert seq.shape[1] == 1 + p
    assert torch.equal(out.timesteps, default.timesteps)  # still diffused
    assert not torch.allclose(seen["hsi"], hsi)
    assert torch.isfinite(out.loss)
    # no masked token: the masked-token weight cannot matter
    weightless = dataclasses.replace(no_mask, masked_loss_weight=0.0)
    assert float(_pretrain_step(weightless, hsi, lidar)[0].loss.detach()) == pytest.approx(
        float(out.loss.detach()))


def test_paired_differences_pool_runs_files_seed_by_seed(run, tmp_path):
    from experiments.paired import paired_differences

    rows = read_runs(run["out"] / "runs.csv")
    got = {(d.shots, d.method): d for d in paired_differences(rows)}
    assert set(got) == {(str(k), m) for k in SHOTS for m in METHODS if m != "diffclip"}
    for (k, method), d in got.items():
        ours = {r["seed"]: r["oa"] for r in rows if r["method"] == "diffclip" and r["shots"] == k}
        theirs = {r["seed"]: r["oa"] for r in rows if r["method"] == method and r["shots"] == k}
        diffs = np.array([ours[s] - theirs[s] for s in SEEDS])
        assert d.seeds == len(SEEDS)
        assert d.mean == pytest.approx(diffs.mean())
        assert d.stderr == pytest.approx(diffs.std(ddof=1) / np.sqrt(len(diffs)))
        assert d.ahead == int((diffs > 0).sum())
    # a seed only one method ran is left out, not paired with another seed
    extra = dict(rows[0], method="rf", seed=99, oa=0.0)
    assert all(d.seeds == len(SEEDS) for d in paired_differences([*rows, extra]))
    # the same run pooled twice is an error, not twice the evidence
    with pytest.raises(ValueError, match="appears twice"):
        paired_differences(rows + rows)


def test_noisy_scene_adds_noise_of_the_asked_size_and_copies_the_rest(salinas_dir, tmp_path):
    import rasterio

    from experiments.noisy_scene import main

    target = tmp_path / "noisy"
    assert main([str(salinas_dir), str(target), "--alpha", "2", "--seed", "3"]) == 0
    with rasterio.open(salinas_dir / "hsi.tif") as src, rasterio.open(target / "hsi.tif") as out:
        clean, noisy = src.read().astype(np.float64), out.read().astype(np.float64)
        assert (out.transform, out.crs, out.count, out.dtypes[0]) == \
            (src.transform, src.crs, src.count, "float32")
    band_std = clean.reshape(clean.shape[0], -1).std(axis=1)
    ratio = (noisy - clean).reshape(clean.shape[0], -1).std(axis=1) / band_std
    assert np.allclose(ratio, 2.0, atol=0.1)
    for name in ("labels.tif", "classes.csv", "labels.gpkg"):
        assert (target / name).read_bytes() == (salinas_dir / name).read_bytes()
    assert not (target / "lidar.tif").exists()
    # the same seed gives the same scene; an existing folder is refused, left as it was
    again = tmp_path / "again"
    main([str(salinas_dir), str(again), "--alpha", "2", "--seed", "3"])
    assert (again / "hsi.tif").read_bytes() == (target / "hsi.tif").read_bytes()
    before = (target / "hsi.tif").read_bytes()
    assert main([str(salinas_dir), str(target), "--alpha", "1"]) == 2
    assert (target / "hsi.tif").read_bytes() == before


def test_noisy_scene_keeps_nodata_and_refuses_a_folder_without_a_cube(tmp_path):
    import rasterio
    from rasterdata import write_tif

    from experiments.noisy_scene import main

    source = tmp_path / "scene"
    source.mkdir()
    rng = np.random.default_rng(0)
    cube = rng.normal(100.0, 10.0, (3, 40, 50)).astype(np.float32)
    cube[:, :5, :] = -9999.0  # a strip of nodata
    cube[:, 5:, :] += 1e4     # far from nodata: a band statistic that took it in would be huge
    write_tif(source / "hsi.tif", cube, nodata=-9999.0)
    write_tif(source / "labels.tif", np.ones((40, 50), np.uint8), nodata=0)
    assert main([str(source), str(tmp_path / "out"), "--alpha", "1"]) == 0
    with rasterio.open(tmp_path / "out" / "hsi.tif") as out:
        noisy = out.read()
        assert out.nodata == -9999.0
    assert (noisy[:, :5, :] == -9999.0).all()
    added = (noisy - cube)[:, 5:, :]
    assert 8.0 < float(added.std()) < 12.0  # one band std (10) of the valid pixels, not more
    missing = tmp_path / "empty"
    missing.mkdir()
    assert main([str(missing), str(tmp_path / "never"), "--alpha", "1"]) == 2
    assert not (tmp_path / "never").exists()
