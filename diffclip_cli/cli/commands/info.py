"""``diffclip info``: what a model file expects and how it was made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from diffclip_cli.cli.app import app
from diffclip_cli.cli.common import start
from diffclip_cli.cli.console import console
from diffclip_cli.cli.options import QuietOpt, VerboseOpt

if TYPE_CHECKING:
    from diffclip_cli.model.modelfile import ModelBundle


def describe_model(bundle: ModelBundle) -> dict[str, Any]:
    """A JSON-friendly description of a model file (no weights)."""
    from diffclip_cli.infer.fast import has_fast_path

    classes = bundle.class_table
    prompts = bundle.prompts or []
    return {
        "kind": bundle.kind,
        "format_version": bundle.format_version,
        "preset": bundle.preset,
        "architecture": bundle.model_config,
        "hsi_bands": bundle.hsi_bands,
        "lidar_bands": bundle.lidar_bands,
        "band_names": bundle.band_names,
        "wavelengths_nm": bundle.wavelengths,
        "normalisation": bundle.scene_stats.hsi.method,
        "template": bundle.template,
        "classes": None if classes is None else [
            {"id": c.id, "name": c.name, "prompt": prompts[i] if i < len(prompts) else None,
             "color": c.hex}
            for i, c in enumerate(classes)],
        "fast_path": has_fast_path(bundle),
        "provenance": bundle.provenance,
        "parameters": int(sum(v.numel() for v in bundle.state_dict.values())),
    }


def _bands(names: list[str], limit: int = 6) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:3]) + f", ... , {names[-1]}"


@app.command(rich_help_panel="Inspect")
def info(
    model: Annotated[Path, typer.Argument(help="A diffclip model file.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")
                       ] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show what a model expects (bands, classes, prompts, preset) and how it was made."""
    from diffclip_cli.model.archive import load_model

    start(verbose, quiet)
    bundle = load_model(model)
    data = describe_model(bundle)
    if as_json:
        console.print_json(json.dumps(data, default=str))
        return
    arch = bundle.config
    table = Table(title=f"{model}", show_header=False)
    table.add_row("kind", f"{bundle.kind} (format {bundle.format_version})")
    table.add_row("preset", f"{bundle.preset}: window {arch.window}, width "
                  f"{arch.dim}, depth {arch.depth}, {data['parameters']:,} "
                  "parameters")
    table.add_row("HSI bands", f"{bundle.hsi_bands} ({_bands(bundle.band_names.get('hsi', []))})")
    if bundle.wavelengths:
        table.add_row("HSI wavelengths", f"{min(bundle.wavelengths):g}-"
                      f"{max(bundle.wavelengths):g} nm")
    lidar = bundle.band_names.get("lidar", [])
    table.add_row("LiDAR channels",
                  f"{bundle.lidar_bands} ({_bands(lidar)})" if bundle.lidar_bands else "none")
    table.add_row("fast path", "yes (classify --fast)" if data["fast_path"] else "no")
    prov = bundle.provenance
    for key in ("shots", "seed", "split", "labels", "created", "version"):
        if prov.get(key) is not None:
            table.add_row(key, str(prov[key]))
    if isinstance(prov.get("inputs"), dict):
        table.add_row("trained on", str(prov["inputs"].get("hsi")))
    from diffclip_cli.train.budget import describe_timing

    plan = prov.get("plan") if isinstance(prov.get("plan"), dict) else None
    if plan and plan.get("line"):
        table.add_row("plan", str(plan["line"]))
    timing = describe_timing(plan, prov.get("seconds") if isinstance(prov.get("seconds"), dict)
                             else None)
    if timing:
        table.add_row("training time", timing)
    console.print(table)
    if data["classes"]:
        ct = Table(title=f"Classes (prompt template {bundle.template})")
        for col in ("id", "name", "prompt"):
            ct.add_column(col)
        for c in data["classes"]:
            ct.add_row(str(c["id"]), f"[{c['color']}]■[/] {c['name']}", c["prompt"] or "")
        console.print(ct)
