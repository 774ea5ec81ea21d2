"""The layering rules of docs/architecture.md, checked on the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import diffclip_cli

PACKAGE = Path(diffclip_cli.__file__).parent
COMMANDS = PACKAGE / "cli" / "commands"
COMMANDS_PACKAGE = "diffclip_cli.cli.commands"


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (inside functions too), as dotted names.

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c`` (``c`` may be a module).
    """
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the file's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_no_command_imports_another_command() -> None:
    """cli/ is a thin layer: shared options live in cli/options.py, workflows in the library."""
    commands = sorted(p for p in COMMANDS.glob("*.py") if p.name != "__init__.py")
    assert len(commands) >= 5
    offending = {}
    for path in commands:
        others = {f"{COMMANDS_PACKAGE}.{p.stem}" for p in commands if p != path}
        hits = sorted(_imported_modules(path) & others)
        if hits:
            offending[path.name] = hits
    assert offending == {}


def test_the_library_never_imports_the_cli() -> None:
    """No import runs back up: only diffclip_cli/cli (and ``python -m``) imports the CLI."""
    offending = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "cli") in path.parents or path == PACKAGE / "__main__.py":
            continue
        hits = sorted(name for name in _imported_modules(path)
                      if name == "diffclip_cli.cli" or name.startswith("diffclip_cli.cli."))
        if hits:
            offending[str(path.relative_to(PACKAGE))] = hits
    assert offending == {}


#: The workflow steps: training and scoring stages, the map writer, output sets, saving a model.
#: Commands reach them only through a ``diffclip_cli.workflows`` function.
WORKFLOW_STEPS = ("diffclip_cli.train.calibrate", "diffclip_cli.train.pretrain",
                  "diffclip_cli.train.finetune", "diffclip_cli.report.scoring",
                  "diffclip_cli.infer.classify",
                  "diffclip_cli.io.atomic", "diffclip_cli.model.archive.save_model",
                  "diffclip_cli.report.render.write_report", "diffclip_cli.report.quicklook")


def test_the_cli_runs_no_workflow_step_itself() -> None:
    """Each command calls one workflow; none trains, maps, saves or opens outputs itself."""
    offending = {}
    for path in sorted((PACKAGE / "cli").rglob("*.py")):
        hits = sorted(name for name in _imported_modules(path)
                      if any(name == step or name.startswith(step + ".")
                             for step in WORKFLOW_STEPS))
        if hits:
            offending[str(path.relative_to(PACKAGE))] = hits
    assert offending == {}


def test_the_product_tests_import_no_research_or_benchmark_code() -> None:
    """Only tests/benchmarks/ tests the benchmarks' and the experiments' own code."""
    tests = Path(__file__).parent
    offending = {}
    for path in sorted(tests.rglob("*.py")):
        if (tests / "benchmarks") in path.parents:
            continue
        hits = sorted(name for name in _imported_modules_of_test(path)
                      if name.split(".")[0] in ("benchmarks", "experiments"))
        if hits:
            offending[str(path.relative_to(tests))] = hits
    assert offending == {}


def _imported_modules_of_test(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names
