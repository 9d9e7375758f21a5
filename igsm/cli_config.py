"""Strict config loading for the entry points: ``load_config(TrainConfig, sys.argv[1:])``.

Precedence, lowest first:

1. the dataclass defaults of the schema (``igsm.config``: the one place defaults live);
2. for every group that is a :class:`~igsm.config.GeneratorConfig` with a ``preset`` field (e.g.
   ``data``): the values of ``GENERATOR_PRESETS[<group>.preset]``;
3. ``configs/<preset>.yaml`` (``preset`` is a top-level key of the schema; it may name a file in
   a sub-folder, e.g. ``preset=depth_width/gpt2-8-15``). A preset file that sets ``preset: other``
   starts from ``configs/other.yaml`` (hard.yaml and the depth-width grid start from med.yaml).
   Each entry point accepts its own presets only: ``configs/probe_*.yaml`` are probe.py's, every
   other file train.py's (the schema's ``ENTRY_POINT`` says which it is);
4. ``config=FILE`` (any YAML file of overrides, e.g. a run's saved ``config.yaml``);
5. ``key=value`` arguments (values are YAML: ``null``, ``3``, ``1e-3``, ``[a,b]``, ``true``).

The schema is a dataclass; OmegaConf's structured configs check every value's type. Unknown keys,
wrong types, and (through the schema's ``validate()``, then :func:`igsm.data_setup.check_generation`
for the settings only generated problems can judge) impossible values raise
:class:`~igsm.config.ConfigError` with one line naming the key, the value and what is allowed.
If the schema has a ``resolve()`` method it runs first (defaults that depend on other keys).
Nothing here is specific to training: probe.py passes its own schema.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from igsm.config import GENERATOR_PRESETS, ConfigError, GeneratorConfig
from igsm.data_setup import check_generation

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

T = TypeVar("T")


def load_config(schema_cls: type[T], argv: list[str], *, config_dir: Optional[Path] = None) -> T:
    """The validated config object for ``argv`` (``key=value`` strings); see the module docstring."""
    config_dir = Path(config_dir) if config_dir is not None else CONFIG_DIR
    cli = [pair for item in argv for pair in _parse_override(schema_cls, item)]
    layers: list[tuple[str, list[tuple[str, Any]]]] = []

    file_path = _last(cli, "config")
    file_pairs = _read_yaml(schema_cls, Path(file_path), "config") if file_path else []
    if _has_field(schema_cls, "preset"):
        preset = _last(cli, "preset") or _last(file_pairs, "preset") or _default(schema_cls, "preset")
        _check_entry_point(schema_cls, config_dir, preset)
        layers.append((f"configs/{preset}.yaml", _read_preset(schema_cls, config_dir, preset)))
    layers.append((f"{file_path}", file_pairs))
    layers.append(("", cli))
    if _has_field(schema_cls, "preset"):  # the preset that was loaded is the preset of the run
        layers.append(("", [("preset", preset)]))

    merged = _merge(schema_cls, layers, generator_presets={})
    # Second pass: generator groups start from their GENERATOR_PRESETS entry, then the same layers.
    presets = {}
    for group in _generator_groups(schema_cls):
        name = OmegaConf.select(merged, group + ".preset")
        if name not in GENERATOR_PRESETS:
            raise ConfigError(f"{group}.preset={name!r} is not allowed: one of {sorted(GENERATOR_PRESETS)}")
        presets[group] = name
    if presets:
        merged = _merge(schema_cls, layers, generator_presets=presets)

    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:  # e.g. a tuple of the wrong length
        raise ConfigError(_one_line(e)) from None
    if hasattr(cfg, "resolve"):
        cfg.resolve()
    if hasattr(cfg, "validate"):
        cfg.validate()
    check_generation(cfg)  # the data checks that generate problems (a training config's only)
    return cfg


def config_to_yaml(cfg: Any) -> str:
    """The config as YAML (every key, resolved), loadable again with ``config=FILE``."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_to_dict(cfg: Any) -> dict:
    """The config as plain Python containers (for checkpoints and comparisons)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def config_from_dict(schema_cls: type[T], data: dict) -> T:
    """Rebuild a config object from :func:`config_to_dict` output (e.g. a checkpoint's hparams)."""
    merged = OmegaConf.merge(OmegaConf.structured(schema_cls), data)
    return OmegaConf.to_object(merged)


PROBE_PRESET_PREFIX = "probe_"


def preset_entry_point(preset: str) -> str:
    """The entry point a preset belongs to: ``configs/probe_*.yaml`` are probe.py's, the rest train.py's."""
    return "probe.py" if Path(str(preset)).name.startswith(PROBE_PRESET_PREFIX) else "train.py"


def available_presets(config_dir: Optional[Path] = None, entry_point: Optional[str] = None) -> list[str]:
    """The preset names under ``configs/``; with ``entry_point`` (``"train.py"``, ``"probe.py"``) only its own."""
    root = Path(config_dir) if config_dir is not None else CONFIG_DIR
    names = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
    return [n for n in names if entry_point is None or preset_entry_point(n) == entry_point]


def presets_help(schema_cls: type, config_dir: Optional[Path] = None) -> str:
    """One line for ``--help``: the presets this schema's entry point accepts."""
    entry_point = getattr(schema_cls, "ENTRY_POINT", None)
    names = available_presets(config_dir, entry_point)
    return f"Presets{' of ' + entry_point if entry_point else ''} (preset=NAME, configs/NAME.yaml): {', '.join(names)}"


def _check_entry_point(schema_cls: type, config_dir: Path, preset: Any) -> None:
    """A preset of another entry point fails with one line saying whose it is."""
    entry_point = getattr(schema_cls, "ENTRY_POINT", None)
    if entry_point is None or not isinstance(preset, str) or not (config_dir / f"{preset}.yaml").is_file():
        return  # no entry point to check against, or a missing file (_read_preset says so)
    owner = preset_entry_point(preset)
    if owner != entry_point:
        raise ConfigError(f"preset={preset!r} is not allowed: it is a {owner} preset (python {owner} preset={preset}); "
                          f"{entry_point} presets: {available_presets(config_dir, entry_point)}")


# -- reading layers ------------------------------------------------------------------------------

def _parse_override(schema_cls: type, item: str) -> list[tuple[str, Any]]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{item!r} is not allowed: arguments are key=value overrides, e.g. trainer.max_steps=100")
    try:
        value = _select(OmegaConf.to_container(OmegaConf.from_dotlist([f"x={raw}"])), ["x"])
    except OmegaConfBaseException:
        value = raw
    if isinstance(value, dict):  # data={max_op: 3} sets data.max_op
        return _flatten(schema_cls, {key: value})
    _field_type(schema_cls, key, value)  # unknown keys fail here, before anything is merged
    return [(key, value)]


def _read_yaml(schema_cls: type, path: Path, key: str) -> list[tuple[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"{key}={str(path)!r} is not allowed: no such file")
    try:
        tree = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:  # noqa: BLE001 - a YAML syntax error of any kind
        raise ConfigError(f"{key}={str(path)!r} is not allowed: not a YAML mapping ({_one_line(e)})") from None
    if tree is None:
        return []
    if not isinstance(tree, dict):
        raise ConfigError(f"{key}={str(path)!r} is not allowed: the file must hold a mapping of keys")
    return _flatten(schema_cls, tree, where=f" (in {path})")


def _read_preset(schema_cls: type, config_dir: Path, preset: str, seen: tuple = ()) -> list[tuple[str, Any]]:
    """The pairs of configs/<preset>.yaml. A preset file may start from another one by naming it
    in its own ``preset`` key (``depth_width/gpt2-8-15.yaml`` says ``preset: med``)."""
    path = config_dir / f"{preset}.yaml"
    if not isinstance(preset, str) or not path.is_file():
        entry_point = getattr(schema_cls, "ENTRY_POINT", None)
        raise ConfigError(f"preset={preset!r} is not allowed: one of {available_presets(config_dir, entry_point)}")
    pairs = _read_yaml(schema_cls, path, "preset")
    parent = _last(pairs, "preset")
    pairs = [(k, v) for k, v in pairs if k != "preset"]
    if parent is None or parent == preset:
        return pairs
    if parent in seen:
        raise ConfigError(f"preset={preset!r} is not allowed: presets {' -> '.join(seen + (preset, parent))} "
                          "form a cycle")
    return _read_preset(schema_cls, config_dir, parent, seen + (preset,)) + pairs


def _flatten(schema_cls: type, tree: dict, prefix: str = "", where: str = "") -> list[tuple[str, Any]]:
    """Nested YAML mapping -> [(dotted key, value)], descending only into schema groups."""
    out = []
    for k, v in tree.items():
        key = prefix + str(k)
        tp = _field_type(schema_cls, key, v, where)
        if _is_group(tp):
            if not isinstance(v, dict):
                names = ", ".join(f.name for f in dataclasses.fields(tp))
                raise ConfigError(f"{key}={v!r} is not allowed: {key} is a group of keys ({names}){where}")
            out += _flatten(schema_cls, v, key + ".", where)
        else:
            out.append((key, v))
    return out


# -- merging -------------------------------------------------------------------------------------

def _merge(schema_cls: type, layers: list, generator_presets: dict[str, str]):
    cfg = OmegaConf.structured(schema_cls)
    for group, name in generator_presets.items():
        for f in dataclasses.fields(GeneratorConfig):
            OmegaConf.update(cfg, f"{group}.{f.name}", getattr(GENERATOR_PRESETS[name], f.name), merge=False)
    for source, pairs in layers:
        where = f" (in {source})" if source else ""
        for key, value in pairs:
            try:
                OmegaConf.update(cfg, key, value, merge=False)
            except OmegaConfBaseException:
                tp = _field_type(schema_cls, key, value, where)
                raise ConfigError(f"{key}={value!r} is not allowed: expected {_describe(tp)}{where}") from None
    return cfg


def _generator_groups(schema_cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(schema_cls):
        tp = typing.get_type_hints(schema_cls)[f.name]
        if _is_group(tp):
            if issubclass(tp, GeneratorConfig) and _has_field(tp, "preset"):
                out.append(prefix + f.name)
            out += _generator_groups(tp, prefix + f.name + ".")
    return out


# -- the schema ----------------------------------------------------------------------------------

def _field_type(schema_cls: type, key: str, value: Any = None, where: str = "") -> Any:
    """The annotated type of a dotted key, or a ConfigError naming the closest valid key."""
    cls = schema_cls
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not _is_group(cls):
            group = ".".join(parts[:depth])
            raise ConfigError(f"{key}={value!r} is not allowed: {group} is a single value, not a group{where}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            group = ".".join(parts[:depth])
            close = difflib.get_close_matches(key, _all_keys(schema_cls), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"{key}={value!r} is not allowed: unknown key ({hint}"
                              f"{'keys of ' + group if group else 'top-level keys'}: {', '.join(names)}){where}")
        cls = hints[part]
    return cls


def _all_keys(schema_cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(schema_cls)
    for f in dataclasses.fields(schema_cls):
        tp = hints[f.name]
        out += _all_keys(tp, prefix + f.name + ".") if _is_group(tp) else [prefix + f.name]
    return out


def _is_group(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _has_field(cls: type, name: str) -> bool:
    return _is_group(cls) and any(f.name == name for f in dataclasses.fields(cls))


def _default(cls: type, name: str) -> Any:
    return getattr(cls(), name)


def _describe(tp: Any) -> str:
    """A type annotation in words, for error messages."""
    if _is_group(tp):
        return f"a group of keys ({', '.join(f.name for f in dataclasses.fields(tp))})"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        rest = [a for a in args if a is not type(None)]
        return "null or " + " or ".join(_describe(a) for a in rest)
    if origin is list:  # typing.List[...] too
        if not args:
            return "a list"
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s, e.g. [1, 2]"
    if origin is tuple:
        return f"a list of {len(args)} values, e.g. {list(a() for a in args)}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _select(tree: Any, parts: list[str]) -> Any:
    for p in parts:
        tree = tree[p]
    return tree


def _last(pairs: list[tuple[str, Any]], key: str) -> Any:
    values = [v for k, v in pairs if k == key]
    return values[-1] if values else None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


__all__ = ["load_config", "config_to_yaml", "config_to_dict", "config_from_dict", "available_presets", "CONFIG_DIR",
           "preset_entry_point", "presets_help"]
