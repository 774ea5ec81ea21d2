"""Class tables: id, name, description and display colour of each land-cover class."""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

from diffclip_cli.errors import InputError, LabelError
from diffclip_cli.io.textfiles import read_text_file

__all__ = ["DEFAULT_PALETTE", "ClassInfo", "ClassTable", "parse_color"]

#: Distinct colours (RGB) given to classes that come without one, in class order.
DEFAULT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)


def parse_color(value: str | Sequence[int] | None) -> tuple[int, int, int] | None:
    """Parse ``#rrggbb``, ``r,g,b`` / ``r g b`` or a sequence of three ints.

    Args:
        value: the colour, or ``None``/empty for none.

    Returns:
        An ``(r, g, b)`` tuple, or ``None`` when no colour was given.

    Raises:
        ValueError: when the value is not a colour.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("#") and len(text) == 7:
            rgb = tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))
        else:
            rgb = tuple(int(float(p)) for p in text.replace(",", " ").split())
    else:
        rgb = tuple(int(v) for v in value)
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"not an RGB colour: {value!r}")
    return (rgb[0], rgb[1], rgb[2])


@dataclass(frozen=True)
class ClassInfo:
    """One land-cover class.

    Attributes:
        id: the class value in label and map rasters (1..65535; 0 means unlabelled/nodata).
        name: the class name, used in prompts and reports.
        description: an optional class-specific description (the paper's prompt p5).
        color: display colour ``(r, g, b)``; ``None`` (the default) until a
            :class:`ClassTable` gives the class its colour from :data:`DEFAULT_PALETTE`.
    """

    id: int
    name: str
    description: str = ""
    color: tuple[int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dictionary (``color`` is ``None`` only outside a table)."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "color": None if self.color is None else list(self.color),
        }

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The display colour ``(r, g, b)``.

        Raises:
            ValueError: the class has no colour (only outside a :class:`ClassTable`).
        """
        if self.color is None:
            raise ValueError(f"class {self.name!r} has no colour; classes of a ClassTable do")
        return self.color

    @property
    def hex(self) -> str:
        """The display colour as ``#rrggbb`` (see :attr:`rgb`)."""
        return "#{:02x}{:02x}{:02x}".format(*self.rgb)


class ClassTable(Sequence[ClassInfo]):
    """An ordered table of classes with unique ids and unique names.

    The position of a class in the table is its *index* (0-based), used by the model's outputs;
    its *id* is the value written to rasters. Classes without a colour get one from
    :data:`DEFAULT_PALETTE`.

    Args:
        classes: the classes, in model order. Items may be :class:`ClassInfo` or dictionaries
            with keys ``id``, ``name`` and optionally ``description`` and ``color``.

    Raises:
        LabelError: on duplicate ids or names, ids outside 1..65535, or an empty table.
    """

    def __init__(self, classes: Iterable[ClassInfo | dict[str, Any]]) -> None:
        items: list[ClassInfo] = []
        for i, c in enumerate(classes):
            if isinstance(c, dict):
                c = ClassInfo(
                    id=int(c["id"]),
                    name=str(c["name"]),
                    description=str(c.get("description") or ""),
                    color=parse_color(c.get("color")),
                )
            if c.color is None:  # the default palette, in table order (dicts and ClassInfo)
                c = dataclasses.replace(c, color=DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)])
            items.append(c)
        if not items:
            raise LabelError("the class table is empty", hint="give at least one class")
        ids = [c.id for c in items]
        names = [c.name for c in items]
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise LabelError(f"class ids are not unique: {twice} appear more than once",
                             hint="give each class its own id")
        folded = [n.casefold() for n in names]
        if len(set(folded)) != len(names):
            twice_names = sorted({n for n in names if folded.count(n.casefold()) > 1})
            raise LabelError(f"class names are not unique: {twice_names} appear more than once "
                             "(case does not matter)", hint="give each class its own name")
        bad = [i for i in ids if not 1 <= i <= 65535]
        if bad:
            raise LabelError(f"class ids must be 1..65535 (0 means unlabelled), got {bad}")
        self._items = tuple(items)
        self._by_id = {c.id: k for k, c in enumerate(items)}
        self._by_name = {c.name.casefold(): k for k, c in enumerate(items)}

    @overload
    def __getitem__(self, index: int) -> ClassInfo: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ClassInfo]: ...
    def __getitem__(self, index: int | slice) -> ClassInfo | Sequence[ClassInfo]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[ClassInfo]:
        return iter(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassTable) and self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"ClassTable({[(c.id, c.name) for c in self._items]})"

    @property
    def ids(self) -> list[int]:
        """Class ids in table order."""
        return [c.id for c in self._items]

    @property
    def names(self) -> list[str]:
        """Class names in table order."""
        return [c.name for c in self._items]

    def index_of_id(self, class_id: int) -> int:
        """The 0-based table index of a class id.

        Raises:
            KeyError: if no class has this id.
        """
        return self._by_id[int(class_id)]

    def index_of_name(self, name: str) -> int:
        """The 0-based table index of a class name (case-insensitive).

        Raises:
            KeyError: if no class has this name.
        """
        return self._by_name[name.casefold()]

    def by_id(self, class_id: int) -> ClassInfo:
        """The class with this id."""
        return self._items[self.index_of_id(class_id)]

    def has_name(self, name: str) -> bool:
        """Whether a class of this name (case-insensitive) exists."""
        return name.casefold() in self._by_name

    def with_descriptions(self, descriptions: dict[str, str]) -> ClassTable:
        """A copy with descriptions replaced for the classes named in ``descriptions``.

        Raises:
            LabelError: if a name in ``descriptions`` is not a class of this table.
        """
        unknown = [n for n in descriptions if not self.has_name(n)]
        if unknown:
            raise LabelError(
                f"descriptions name unknown classes {unknown}",
                hint=f"use the class names {self.names}",
            )
        folded = {k.casefold(): v for k, v in descriptions.items()}
        return ClassTable(
            dataclasses.replace(c, description=folded.get(c.name.casefold(), c.description))
            for c in self._items
        )

    def to_records(self) -> list[dict[str, Any]]:
        """A JSON-friendly list of dictionaries (see the constructor)."""
        return [c.to_dict() for c in self._items]

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]]) -> ClassTable:
        """Rebuild a table from :meth:`to_records` output."""
        return cls(records)

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> ClassTable:
        """Read a classes table: a CSV with a header ``id,name[,description][,color]``.

        Colours may be ``#rrggbb`` or ``r g b``. Rows keep the file's order.

        Raises:
            InputError: when the file is missing or malformed.
            LabelError: when ids or names repeat.
        """
        path = os.fspath(path)
        fix = "give a CSV with a header 'id,name' and one row per class"
        text = read_text_file(path, what="classes table", hint=fix)
        try:
            rows = list(csv.DictReader(text.splitlines()))
        except csv.Error as exc:
            raise InputError(f"the classes table is not a valid CSV ({exc})", path=path,
                             hint=fix) from None
        if not rows:
            raise InputError("the classes table has no rows", path=path,
                             hint="write a header 'id,name' and one row per class")
        header = {k.strip().lower(): k for k in rows[0] if k}
        if "id" not in header or "name" not in header:
            raise InputError(
                f"the classes table needs columns 'id' and 'name', found {list(rows[0])}",
                path=path,
            )
        records = []
        for n, row in enumerate(rows, start=2):
            try:
                records.append({
                    "id": int(str(row[header["id"]]).strip()),
                    "name": str(row[header["name"]]).strip(),
                    "description": (row.get(header.get("description", ""), "") or "").strip(),
                    "color": parse_color(row.get(header.get("color", ""), "") or None),
                })
            except (TypeError, ValueError) as exc:
                raise InputError(f"line {n} of the classes table is malformed ({exc})",
                                 path=path) from None
        for key, fold in (("id", lambda v: v), ("name", lambda v: str(v).casefold())):
            lines: dict[Any, list[int]] = {}
            for n, record in enumerate(records, start=2):
                lines.setdefault(fold(record[key]), []).append(n)
            repeated = [(records[v[0] - 2][key], v) for v in lines.values() if len(v) > 1]
            if repeated:
                value, at = repeated[0]
                more = f" (and {len(repeated) - 1} more repeated {key}s)" if len(repeated) > 1 \
                    else ""
                raise LabelError(
                    f"the class {key} {value!r} appears on lines "
                    f"{', '.join(map(str, at[:-1]))} and {at[-1]} of the classes table{more}",
                    path=path, hint=f"give each class one line with its own {key}")
        try:
            return cls(records)
        except LabelError as exc:
            raise LabelError(exc.message, path=path, hint=exc.hint) from None

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write the table as ``id,name,description,color`` (colour as ``#rrggbb``)."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "name", "description", "color"])
            for c in self._items:
                w.writerow([c.id, c.name, c.description, c.hex])
