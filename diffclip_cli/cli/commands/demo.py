"""``diffclip demo``: the whole pipeline on the embedded Salinas-A scene."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from diffclip_cli.cli.app import app
from diffclip_cli.cli.common import (
    StageProgress,
    fewshot_scene,
    interruptible,
    preset_option,
    start,
)
from diffclip_cli.cli.console import console, err_console
from diffclip_cli.cli.options import DeviceOpt, OverwriteOpt, QuietOpt, SeedOpt, VerboseOpt
from diffclip_cli.data import salinas_a_dir
from diffclip_cli.errors import LabelError, OutputError
from diffclip_cli.train.budget import DEFAULT_CPU_PRESET

if TYPE_CHECKING:
    from diffclip_cli.train.budget import Plan

#: The demo's recipe: the CPU default, which runs the whole demo well under 3 minutes on 2
#: CPU cores (docs/benchmarks.md has the measurements).
DEMO_PRESET = DEFAULT_CPU_PRESET
DEMO_SHOTS = 10
DEMO_PRETRAIN_SAMPLES = 1000


def _show_plan(plan: Plan, level: int) -> None:
    """Print the plan line (what will be trained, the estimate) unless ``-q``."""
    if level >= 0:
        err_console.print(plan.line(), highlight=False, soft_wrap=True)


@app.command(rich_help_panel="Try it")
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the results.")
                      ] = Path("diffclip-demo"),
    shots: Annotated[int, typer.Option("--shots", min=1, help="Labelled pixels per class.")
                     ] = DEMO_SHOTS,
    preset: Annotated[str, typer.Option("--preset", help="Model preset.")] = DEMO_PRESET,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run the whole pipeline on the embedded Salinas-A scene (AVIRIS, 204 bands, 6 classes).

    Few-shot training with a short pretraining stage, a map of the whole scene, its accuracy
    on every labelled pixel not used for training, and a quicklook PNG, all in OUTPUT/.
    Salinas-A has no LiDAR, so the model is HSI-only.
    """
    from diffclip_cli.infer.classify import classify_scene
    from diffclip_cli.io.atomic import output_set
    from diffclip_cli.io.labels import read_labels
    from diffclip_cli.io.maps import map_files
    from diffclip_cli.io.raster import Scene
    from diffclip_cli.model.device import resolve_device
    from diffclip_cli.model.modelfile import save_model
    from diffclip_cli.pipeline import BASELINE_METHOD
    from diffclip_cli.report.quicklook import quicklook
    from diffclip_cli.report.render import (
        baseline_verdict,
        report_paths,
        rich_table,
        write_report,
    )

    level = start(verbose, quiet)
    began = time.perf_counter()
    recipe = preset_option(preset)  # before any work
    data = salinas_a_dir()
    if output.exists() and not output.is_dir():
        raise OutputError("exists and is not a folder", path=output,
                          hint="choose another --output folder")
    output.mkdir(parents=True, exist_ok=True)
    model_path = output / "model.pt"
    map_path = output / "map.tif"
    png_path = output / "map.png"
    report_stem = output / "report"
    dev = resolve_device(device)
    outputs: dict[str, Any] = {"model": model_path, "map": map_files(map_path),
                               "quicklook": png_path,
                               "report": list(report_paths(report_stem).values())}
    inputs = {"the demo scene": data / "hsi.tif", "the demo labels": data / "labels.gpkg"}
    # Every output is checked before the training starts; all appear together at the end.
    with output_set(outputs, inputs=inputs, overwrite=overwrite) as outs:
        err_console.print(f"Salinas-A (AVIRIS, from {data}): {shots} labelled pixels per class, "
                          f"preset {preset}, seed {seed}.")
        with interruptible(), Scene.open(data / "hsi.tif") as scene:
            labels = read_labels(data / "labels.gpkg", scene.grid)
            with StageProgress(enabled=level >= 0) as progress:
                # A plan (as fewshot makes one) times a few steps first: on a busy CPU it
                # trains with one thread when that is faster (it was 30x on 2 shared cores).
                result = fewshot_scene(scene, labels, shots=shots, preset=recipe,
                                       pretrain_samples=DEMO_PRETRAIN_SAMPLES, seed=seed,
                                       device=dev, progress=progress,
                                       provenance={"labels": str(data / "labels.gpkg")},
                                       on_plan=lambda plan: _show_plan(plan, level))
                save_model(result.bundle, model_path, overwrite=overwrite)
                mapped = classify_scene(scene, result.bundle, map_path, device=dev,
                                        overwrite=overwrite, progress=progress.pixels("classify"),
                                        metadata={"model_file": str(model_path)})
        if result.report is None:  # every labelled pixel was a shot
            raise LabelError("no labelled pixel is left to score the model on",
                             hint="use fewer --shots")
        title = (f"Salinas-A: accuracy on the {result.report.n_pixels} labelled pixels not used "
                 f"for training ({shots} per class, seed {seed})")
        reports = write_report(result.report, report_stem, overwrite=overwrite, title=title,
                               metadata={"scene": "Salinas-A", "shots": shots, "seed": seed,
                                         "preset": preset},
                               baseline=result.baseline, baseline_method=BASELINE_METHOD)
        quicklook(outs.pending(map_path), result.bundle.class_table, png_path,
                  overwrite=overwrite,
                  title="Salinas-A land cover (diffclip demo)")
    if level >= 0:
        console.print(rich_table(result.report, title=title))
    if result.baseline is not None:
        console.print(baseline_verdict(result.report, result.baseline), highlight=False,
                      soft_wrap=True)
    seconds = time.perf_counter() - began
    console.print(f"Done in {seconds:.0f} s. Model: {model_path}  Map: {map_path} "
                  f"({mapped.valid_pixels:,} pixels)  Quicklook: {png_path}")
    console.print("Report: " + ", ".join(str(p) for p in reports.values()))
