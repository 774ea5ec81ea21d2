"""docs/cli.md documents every command and every option the CLI has."""

from pathlib import Path

import typer

from diffclip_cli.cli import app
from diffclip_cli.errors import EXIT_CODES

DOC = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()


def _sections() -> dict[str, str]:
    parts = DOC.split("\n## `diffclip ")
    return {p.split("`", 1)[0]: p for p in parts[1:]}


def test_every_command_and_option_is_documented():
    group = typer.main.get_command(app)
    sections = _sections()
    shared = DOC.split("\n## `diffclip ")[0]  # the conventions shared by all commands
    for name, command in group.commands.items():
        assert name in sections, f"docs/cli.md has no section for `diffclip {name}`"
        for param in command.params:
            longs = [o for o in param.opts if o.startswith("--") and o != "--help"]
            assert not longs or any(o in sections[name] or o in shared for o in longs), \
                f"{name}: option {longs} is not documented"


def test_exit_codes_are_documented():
    for code in set(EXIT_CODES.values()):
        assert f"| {code} |" in DOC
