"""Dataclass configs: the one place where every default lives.

Plain dataclasses (no torch, no omegaconf at import) so the generator can use them anywhere.
YAML files in ``configs/`` and command-line dotlists only override these fields;
:func:`igsm.cli_config.load_config` merges them strictly (unknown keys and bad values fail).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional


MAX_OP = 52  # solution steps each take one of the 52 ASCII letters


class ConfigError(ValueError):
    """A config value that is not allowed; the message names the key, the value and what is allowed."""


@dataclass
class GeneratorConfig:
    """Difficulty knobs of the iGSM generator (spec sections 2-8). Defaults: iGSM-med."""

    max_op: int = 15  # op_max: training op ~ min of two uniform draws on 1..max_op
    max_ip: int = 20  # ip_max: at most this many instance parameters (edges)
    min_layers: int = 2  # d, the number of layers, lies in [min_layers, max_layers] (2..4)
    max_layers: int = 4
    min_width: int = 2  # items per layer lie in [min_width, max_width] (2..4)
    max_width: int = 4
    op: Optional[int] = None  # force op = N (the paper's op=N test sets; may exceed max_op)
    reask: bool = False  # re-draw the question after generation (spec 8)
    fmt: str = "pq"  # "pq": question after the statements; "qp": question first
    split: str = "train"  # "train", "test" (template hash buckets) or "any"
    split_boundary: int = 17  # buckets 0..boundary-1 are train, boundary..22 test
    world: Optional[str] = None  # world JSON file; None = the default shipped with igsm
    families: Optional[list[int]] = None  # restrict to these families of the world
    n_groups: Optional[int] = None  # use only the first n groups of each category
    group_size: Optional[int] = None  # use only the first n names of each group


GENERATOR_PRESETS: dict[str, GeneratorConfig] = {
    "med": GeneratorConfig(max_op=15, max_ip=20),
    "hard": GeneratorConfig(max_op=21, max_ip=28),
    # Small enough for a few minutes of CPU training: one family, 6 names per category,
    # at most 3 layers and 6 edges, so problems are short and have few distractors.
    "tiny": GeneratorConfig(
        max_op=4, max_ip=6, min_layers=2, max_layers=3, min_width=2, max_width=3,
        families=[0], n_groups=1, group_size=6,
    ),
}


def generator_preset(name: str, **overrides) -> GeneratorConfig:
    """A copy of a preset with some fields replaced (validated)."""
    if name not in GENERATOR_PRESETS:
        raise ConfigError(f"preset={name!r} is unknown; allowed: {sorted(GENERATOR_PRESETS)}")
    cfg = replace(GENERATOR_PRESETS[name], **overrides)
    validate_generator(cfg)
    return cfg


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def validate_generator(cfg: GeneratorConfig, prefix: str = "") -> None:
    """Reject impossible generator settings up front, naming the key and what is allowed."""
    k = lambda name: prefix + name  # noqa: E731
    _check(isinstance(cfg.max_op, int) and 1 <= cfg.max_op <= MAX_OP, k("max_op"), cfg.max_op,
           f"an integer in 1..{MAX_OP}")
    _check(2 <= cfg.min_layers <= cfg.max_layers <= 4, k("min_layers/max_layers"),
           (cfg.min_layers, cfg.max_layers), "2 <= min_layers <= max_layers <= 4")
    _check(2 <= cfg.min_width <= cfg.max_width <= 4, k("min_width/max_width"),
           (cfg.min_width, cfg.max_width), "2 <= min_width <= max_width <= 4")
    min_ip = (cfg.min_layers - 1) * cfg.min_width
    _check(isinstance(cfg.max_ip, int) and cfg.max_ip >= min_ip, k("max_ip"), cfg.max_ip,
           f"an integer >= (min_layers - 1) * min_width = {min_ip}")
    _check(cfg.op is None or (isinstance(cfg.op, int) and 1 <= cfg.op <= MAX_OP), k("op"), cfg.op,
           f"null or an integer in 1..{MAX_OP} (one solution letter per step)")
    _check(cfg.fmt in ("pq", "qp"), k("fmt"), cfg.fmt, "'pq' or 'qp'")
    _check(cfg.split in ("train", "test", "any"), k("split"), cfg.split, "'train', 'test' or 'any'")
    _check(1 <= cfg.split_boundary <= 22, k("split_boundary"), cfg.split_boundary,
           "an integer in 1..22 (buckets below it are train, the rest test)")
    _check(cfg.group_size is None or cfg.group_size >= cfg.max_width, k("group_size"), cfg.group_size,
           f"null or an integer >= max_width ({cfg.max_width})")
    _check(cfg.n_groups is None or cfg.n_groups >= 1, k("n_groups"), cfg.n_groups, "null or >= 1")


@dataclass
class ModelConfig:
    """GPT-2 with rotary position embeddings. GPT2-l-h = n_layer l, n_head h, n_embd 64*h."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: Optional[int] = None  # None = 64 * n_head
    block_size: int = 2048  # longest sequence (prompt + generation) the RoPE cache covers
    rope_base: float = 10000.0
    dropout: float = 0.0
    bias: bool = True
    compile: bool = False  # wrap the forward in torch.compile (checkpoint keys unchanged)

    @property
    def d_model(self) -> int:
        return self.n_embd if self.n_embd is not None else 64 * self.n_head


def validate_model(cfg: ModelConfig, prefix: str = "model.") -> None:
    _check(cfg.n_layer >= 1, prefix + "n_layer", cfg.n_layer, "an integer >= 1")
    _check(cfg.n_head >= 1, prefix + "n_head", cfg.n_head, "an integer >= 1")
    d = cfg.d_model
    _check(d % cfg.n_head == 0 and (d // cfg.n_head) % 2 == 0, prefix + "n_embd", cfg.n_embd,
           f"a multiple of n_head ({cfg.n_head}) with an even head size (RoPE rotates pairs)")
    _check(0.0 <= cfg.dropout < 1.0, prefix + "dropout", cfg.dropout, "a float in [0, 1)")
    _check(cfg.block_size >= 16, prefix + "block_size", cfg.block_size, "an integer >= 16")


def field_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]


__all__ = [
    "ConfigError", "GeneratorConfig", "GENERATOR_PRESETS", "generator_preset", "validate_generator",
    "ModelConfig", "validate_model", "field", "field_names",
]
