"""The world: families of 4 layer categories, each with themed groups of item names
(docs/spec.md#1-the-world-and-its-names).

The world is data: a JSON file (the default ships as ``igsm/assets/world.json``)::

    {"families": [{"layers": [{"category": "School", "groups": {"High Schools": [...], ...}},
                              ... 4 layers ...]}, ...]}

:func:`load_world` validates a file and raises :class:`WorldError` naming exactly what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

ASSETS = Path(__file__).parent / "assets"  # the files igsm ships (package data)
DEFAULT_WORLD = ASSETS / "world.json"
# Worlds shipped with igsm, usable by name wherever a world file is expected.
SHIPPED_WORLDS = {"default": DEFAULT_WORLD, "tiny": ASSETS / "world_tiny.json"}
LAYERS_PER_FAMILY = 4
MAX_WIDTH = 4  # the widest layer a problem can have; a usable group needs this many names
# Characters that would make sentences ambiguous to split or parse.
FORBIDDEN_IN_NAMES = (".", ";", "?", ",", "=", "\n", "\t")


class WorldError(ValueError):
    """A world file that cannot be used, with the path inside the file that is wrong."""


@dataclass(frozen=True)
class Layer:
    category: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]  # (group name, item names)


@dataclass(frozen=True)
class Family:
    layers: tuple[Layer, ...]


@dataclass(frozen=True)
class World:
    families: tuple[Family, ...]
    source: str = "<memory>"

    @property
    def categories(self) -> list[str]:
        return [layer.category for f in self.families for layer in f.layers]

    def all_names(self) -> set[str]:
        return {n for f in self.families for layer in f.layers for _, g in layer.groups for n in g}

    def subset(
        self,
        families: Optional[Sequence[int]] = None,
        n_groups: Optional[int] = None,
        group_size: Optional[int] = None,
    ) -> World:
        """A smaller world: some families, the first groups of each layer, the first names of
        each group. Used by small presets (a small world is easier to learn)."""
        fams = self.families if families is None else tuple(self.families[i] for i in families)
        out = []
        for f in fams:
            layers = []
            for layer in f.layers:
                groups = layer.groups if n_groups is None else layer.groups[:n_groups]
                if group_size is not None:
                    groups = tuple((gname, names[:group_size]) for gname, names in groups)
                layers.append(Layer(layer.category, groups))
            out.append(Family(tuple(layers)))
        return World(tuple(out), source=self.source)


def _fail(source: str, where: str, msg: str) -> WorldError:
    return WorldError(f"world file {source}: {where}: {msg}")


def parse_world(data: object, source: str = "<memory>") -> World:
    """Validate a decoded world JSON object and build a :class:`World`."""
    if not isinstance(data, dict) or "families" not in data:
        raise _fail(source, "top level", 'expected an object with key "families"')
    fams = data["families"]
    if not isinstance(fams, list) or not fams:
        raise _fail(source, "families", "expected a non-empty list of families")
    families = []
    for fi, fam in enumerate(fams):
        where_f = f"families[{fi}]"
        if not isinstance(fam, dict) or not isinstance(fam.get("layers"), list):
            raise _fail(source, where_f, 'expected an object with a list "layers"')
        if len(fam["layers"]) != LAYERS_PER_FAMILY:
            raise _fail(
                source, f"{where_f}.layers", f"has {len(fam['layers'])} layers, expected {LAYERS_PER_FAMILY}"
            )
        layers = []
        for li, layer in enumerate(fam["layers"]):
            where_l = f"{where_f}.layers[{li}]"
            if not isinstance(layer, dict):
                raise _fail(source, where_l, "expected an object with keys category, groups")
            cat = layer.get("category")
            if not isinstance(cat, str) or not cat.strip() or cat != cat.strip():
                raise _fail(source, f"{where_l}.category", f"{cat!r} is not a non-empty trimmed string")
            if any(c in cat for c in FORBIDDEN_IN_NAMES) or "'s " in cat:
                raise _fail(source, f"{where_l}.category", f"{cat!r} contains a forbidden character")
            groups = layer.get("groups")
            if not isinstance(groups, dict) or not groups:
                raise _fail(source, f"{where_l}.groups", "expected a non-empty object of name lists")
            gl = []
            for gname, names in groups.items():
                where_g = f"{where_l}.groups[{gname!r}]"
                if not isinstance(names, list) or len(names) < MAX_WIDTH:
                    raise _fail(source, where_g, f"expected a list of at least {MAX_WIDTH} names")
                seen = set()
                for ni, name in enumerate(names):
                    if not isinstance(name, str) or not name.strip() or name != name.strip():
                        raise _fail(source, f"{where_g}[{ni}]", f"{name!r} is not a non-empty trimmed string")
                    bad = [c for c in FORBIDDEN_IN_NAMES if c in name]
                    if bad or "  " in name:
                        raise _fail(source, f"{where_g}[{ni}]", f"{name!r} contains forbidden {bad or 'double space'}")
                    if name in seen:
                        raise _fail(source, f"{where_g}[{ni}]", f"{name!r} appears twice in the group")
                    seen.add(name)
                gl.append((gname, tuple(names)))
            layers.append(Layer(cat, tuple(gl)))
        families.append(Family(tuple(layers)))
    cats = [layer.category for f in families for layer in f.layers]
    dup = sorted({c for c in cats if cats.count(c) > 1})
    if dup:
        raise _fail(source, "categories", f"category names must be unique, repeated: {dup}")
    return World(tuple(families), source=source)


@lru_cache(maxsize=16)
def _load_cached(path: str) -> World:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise WorldError(f"world file {path}: cannot be read ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorldError(f"world file {path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    return parse_world(data, source=str(path))


def load_world(path: Union[str, Path, None] = None) -> World:
    """Load and validate a world file. ``None`` is the default world; ``"tiny"`` names the small
    world of one-word names shipped for the CPU preset (see ``SHIPPED_WORLDS``)."""
    if path is None:
        path = DEFAULT_WORLD
    elif str(path) in SHIPPED_WORLDS:
        path = SHIPPED_WORLDS[str(path)]
    return _load_cached(str(Path(path)))
