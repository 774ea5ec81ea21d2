"""The commands; importing this package registers them on :data:`diffclip_cli.cli.app.app`."""

from diffclip_cli.cli.commands import batch, classify, demo, evaluate, info, train  # noqa: F401
