"""Class prompts: the paper's templates p1..p4 and class-specific descriptions (p5).

The paper's ablation on Houston 2013 (OA): p1 97.61, p2 97.05, p3 97.63, p4 97.93 and p5 (one
description per class) 98.15. p4 is the default: the best template that needs nothing from the
user; p5 needs a descriptions file.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from diffclip_cli.errors import InputError, LabelError, UsageError
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.io.textfiles import read_text_file

__all__ = [
    "DEFAULT_TEMPLATE",
    "DESCRIPTION_FORMAT",
    "TEMPLATES",
    "build_prompts",
    "check_template",
    "class_prompts",
    "class_words",
    "read_descriptions",
]

#: The paper's class-agnostic templates.
TEMPLATES: dict[str, str] = {
    "p1": "a patch of a {class}.",
    "p2": "a nice patch of a {class}.",
    "p3": "a fusion patch of a {class}.",
    "p4": "a multimodal fusion patch of a {class} with strong semantic information.",
}

#: How p5 turns a class and its description into a prompt.
DESCRIPTION_FORMAT = "{class}: {description}"

DEFAULT_TEMPLATE = "p4"


def class_words(name: str) -> str:
    """A class name as prompt words: ``"Lettuce_romaine_4wk"`` -> ``"lettuce romaine 4wk"``."""
    return re.sub(r"[_\s]+", " ", name).strip().lower()


def _key(name: str) -> str:
    return class_words(name).casefold()


def read_descriptions(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read class descriptions for the p5 prompts.

    Formats: CSV with a header ``class,description`` (``name`` may replace ``class``), or a
    YAML / JSON mapping ``class: description``.

    Args:
        path: the file.

    Returns:
        ``{class name: description}`` in file order.

    Raises:
        InputError: when the file is missing, unreadable or not in one of these formats.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    fix = "write a CSV 'class,description' or a YAML/JSON mapping of class to description"
    text = read_text_file(path, what="descriptions file", hint=fix)
    if suffix == ".csv":
        try:
            rows = list(csv.DictReader(text.splitlines()))
        except csv.Error as exc:
            raise InputError(f"malformed CSV ({exc})", path=path, hint=fix) from None
        header = {k.strip().lower(): k for k in (rows[0] if rows else {}) if k}
        name_col = header.get("class") or header.get("name")
        desc_col = header.get("description")
        if not rows or name_col is None or desc_col is None:
            raise InputError("the descriptions table needs columns 'class' and 'description'",
                             path=path, hint=fix)
        data: object = {str(r[name_col]).strip(): str(r[desc_col] or "").strip() for r in rows}
    else:
        try:
            data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise InputError(f"malformed descriptions file ({exc})".replace("\n", " "),
                             path=path, hint=fix) from None
    if not isinstance(data, dict) or not data or not all(
            isinstance(v, str) for v in data.values()):
        raise InputError("the descriptions file is not a mapping of class to text",
                         path=path, hint=fix)
    return {str(k).strip(): v.strip() for k, v in data.items()}


def check_template(template: str | None, *, descriptions: bool) -> None:
    """Refuse a prompt template that cannot make prompts, before any work.

    Args:
        template: ``p1`` .. ``p5``, a text with ``{class}``, or ``None`` (the preset's).
        descriptions: whether class descriptions will be there (a descriptions file or a
            classes table that may carry them), which ``p5`` needs.

    Raises:
        UsageError: an unknown template, or ``p5`` with nothing to describe the classes.
    """
    if template is None or template in TEMPLATES:
        return
    if template == "p5":
        if not descriptions:
            raise UsageError("p5 builds prompts from class descriptions",
                             hint="pass --descriptions FILE or a --classes table with a "
                                  "description column", option="--prompt")
        return
    if "{class}" not in template:
        raise UsageError(f"unknown prompt template {template!r}",
                         hint="use p1, p2, p3, p4, p5 or a text containing {class}",
                         option="--prompt")


def build_prompts(
    class_names: Sequence[str],
    *,
    template: str = DEFAULT_TEMPLATE,
    descriptions: Mapping[str, str] | str | os.PathLike[str] | None = None,
) -> list[str]:
    """One prompt per class, in class order.

    Args:
        class_names: the classes, in the model's output order.
        template: ``p1`` .. ``p4`` (the paper's templates), ``p5`` (class-specific
            descriptions), or a custom template containing ``{class}``.
        descriptions: for ``p5``: a mapping class -> description, or a file for
            :func:`read_descriptions`. Names match case-insensitively, ``_`` as a space.

    Returns:
        The prompts, e.g. ``"a patch of a lettuce romaine 4wk."`` for p1.

    Raises:
        LabelError: descriptions name a class that does not exist (the message lists the
            classes), or p5 lacks a description for some class.
        InputError: the descriptions file is unreadable.
        UsageError: an unknown template (a ``ValueError``).
    """
    if template in TEMPLATES:
        return [TEMPLATES[template].replace("{class}", class_words(n)) for n in class_names]
    if template != "p5":
        check_template(template, descriptions=False)
        return [template.replace("{class}", class_words(n)) for n in class_names]
    if descriptions is None:
        raise LabelError("prompt template p5 needs class descriptions",
                         hint="pass a descriptions file (CSV class,description, YAML or JSON)")
    source = None
    if isinstance(descriptions, (str, os.PathLike)):
        source = descriptions
        descriptions = read_descriptions(descriptions)
    known = {_key(n): n for n in class_names}
    unknown = [n for n in descriptions if _key(n) not in known]
    if unknown:
        raise LabelError(f"descriptions name unknown classes {unknown}", path=source,
                         hint=f"use the class names {list(class_names)}")
    by_key = {_key(k): v.strip() for k, v in descriptions.items() if v and v.strip()}
    missing = [n for n in class_names if _key(n) not in by_key]
    if missing:
        raise LabelError(f"no description for the classes {missing}", path=source,
                         hint="give every class a description, or use template p1..p4")
    prompts = []
    for n in class_names:
        text = by_key[_key(n)]
        text = text if text[-1] in ".!?" else text + "."
        prompts.append(DESCRIPTION_FORMAT.replace("{class}", class_words(n))
                       .replace("{description}", text))
    return prompts


def class_prompts(classes: ClassTable, template: str,
                  descriptions: Mapping[str, str] | str | os.PathLike[str] | None, *,
                  left_out: Sequence[str] = ()) -> list[str]:
    """The class prompts; descriptions of classes ``left_out`` of the model are ignored."""
    if template == "p5" and descriptions is None:
        if all(c.description for c in classes):
            descriptions = {c.name: c.description for c in classes}
        else:
            missing = [c.name for c in classes if not c.description]
            raise LabelError(f"prompt template p5 needs a description for every class; "
                             f"missing for {missing}",
                             hint="pass --descriptions FILE or a classes table with a "
                                  "description column")
    source = None
    if template == "p5" and left_out and descriptions is not None:
        if isinstance(descriptions, (str, os.PathLike)):
            source = descriptions
            descriptions = read_descriptions(descriptions)
        gone = {class_words(n).casefold() for n in left_out}
        descriptions = {k: v for k, v in descriptions.items()
                        if class_words(k).casefold() not in gone}
    try:
        return build_prompts(classes.names, template=template, descriptions=descriptions)
    except LabelError as exc:
        if source is None or exc.path is not None:
            raise
        raise LabelError(exc.message, path=source, hint=exc.hint) from None
