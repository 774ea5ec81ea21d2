"""The commands; importing this package registers them on :data:`diffclip_cli.cli.app.app`."""

from diffclip_cli.cli.commands import (  # noqa: F401
    batch,
    classify,
    demo,
    evaluate,
    info,
    suggest,
    train,
)
