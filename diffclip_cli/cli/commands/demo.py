"""``diffclip demo``: the whole pipeline on the embedded Salinas-A scene.

The command parses its options into :class:`~diffclip_cli.workflows.demo.DemoOptions`, calls
:func:`~diffclip_cli.workflows.demo.run_demo` and prints what it returns.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from diffclip_cli.cli.app import app
from diffclip_cli.cli.common import StageProgress, interruptible, preset_option, start
from diffclip_cli.cli.console import console, err_console
from diffclip_cli.cli.options import DeviceOpt, OverwriteOpt, QuietOpt, SeedOpt, VerboseOpt
from diffclip_cli.train.budget import DEFAULT_CPU_PRESET

if TYPE_CHECKING:
    from diffclip_cli.train.budget import Plan

#: The demo's recipe: the CPU default, which runs the whole demo well under 3 minutes on 2
#: CPU cores (docs/benchmarks.md has the measurements).
DEMO_PRESET = DEFAULT_CPU_PRESET
DEMO_SHOTS = 10


def _show_plan(plan: Plan, level: int) -> None:
    """Print the plan line (what will be trained, the estimate) unless ``-q``.

    Only the line: unlike fewshot's plan printer, no advice to pass ``--time-budget``, which
    the demo does not have.
    """
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
    from diffclip_cli.report.render import baseline_verdicts, rich_table
    from diffclip_cli.workflows.demo import DemoOptions, run_demo

    level = start(verbose, quiet)
    began = time.perf_counter()
    options = DemoOptions(preset=preset_option(preset), preset_name=preset, shots=shots,
                          seed=seed, device=device, overwrite=overwrite)

    def intro(data: Path) -> None:
        err_console.print(f"Salinas-A (AVIRIS, from {data}): {shots} labelled pixels per class, "
                          f"preset {preset}, seed {seed}.")

    with interruptible(), StageProgress(enabled=level >= 0) as progress:
        outcome = run_demo(output, options=options, progress=progress,
                           on_plan=lambda plan: _show_plan(plan, level), on_start=intro)
    result = outcome.result
    if level >= 0:
        console.print(rich_table(outcome.report, title=outcome.title))
    for verdict in baseline_verdicts(outcome.report, result.baselines):
        console.print(verdict, highlight=False, soft_wrap=True)
    seconds = time.perf_counter() - began
    console.print(f"Done in {seconds:.0f} s. Model: {outcome.model}  Map: {outcome.map} "
                  f"({outcome.valid_pixels:,} pixels)  Quicklook: {outcome.quicklook}")
    console.print("Report: " + ", ".join(str(p) for p in outcome.report_paths.values()))
