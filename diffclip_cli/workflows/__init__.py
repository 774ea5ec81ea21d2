"""The workflows the commands run, as library functions over small frozen option objects.

Each module holds one workflow: :mod:`~diffclip_cli.workflows.pretrain` (a scene's unlabelled
pixels to a pretrained model file), :mod:`~diffclip_cli.workflows.fewshot` (a scene and its
labels to a model file and its held-out report), :mod:`~diffclip_cli.workflows.classify` (a
scene to a map and its side files), :mod:`~diffclip_cli.workflows.evaluate` (a map against
labels to a report), :mod:`~diffclip_cli.workflows.batch` (the per-scene step of a manifest),
:mod:`~diffclip_cli.workflows.demo` (the whole pipeline on the embedded Salinas-A scene);
:mod:`~diffclip_cli.workflows.common` holds the steps they share. A command of
:mod:`diffclip_cli.cli` parses its options into one of the option objects and calls one of
these functions; Python users call them the same way.

This package imports nothing heavy at import time; its modules import the library (torch,
rasterio) when imported, so the command line imports them inside its commands.
"""
