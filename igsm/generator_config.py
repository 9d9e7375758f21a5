"""The generator's config: the difficulty knobs of one problem stream, its presets and their checks.

Torch-free and in the core layer (docs/architecture.md): :mod:`igsm.generator` and
:mod:`igsm.graph` read :class:`GeneratorConfig`. The training and probing configs build on it
(:mod:`igsm.train_config`, :mod:`igsm.probe_config`); :mod:`igsm.config` hands all of them on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from .retry import RETRY_KINDS, RETRY_WEAK_FROM

MAX_OP = 52  # solution steps each take one of the 52 ASCII letters
OP_SAMPLING = ("min2", "uniform")  # GeneratorConfig.op_sampling


class ConfigError(ValueError):
    """A config value that is not allowed; the message names the key, the value and what is allowed."""


@dataclass
class GeneratorConfig:
    """Difficulty knobs of the iGSM generator (docs/spec.md#5-sampling-a-problem). Defaults: iGSM-med."""

    max_op: int = 15  # op_max: training op in 1..max_op, drawn as op_sampling says
    max_ip: int = 20  # ip_max: at most this many instance parameters (edges)
    min_layers: int = 2  # d, the number of layers, lies in [min_layers, max_layers] (2..4)
    max_layers: int = 4
    min_width: int = 2  # items per layer lie in [min_width, max_width] (2..4)
    max_width: int = 4
    op: Optional[int] = None  # force op = N (the paper's op=N test sets; may exceed max_op)
    reask: bool = False  # re-draw the question after generation (docs/spec.md#9-reask)
    fmt: str = "pq"  # "pq": question after the statements; "qp": question first
    split: str = "train"  # "train", "test" (template hash buckets) or "any"
    # How op is drawn when not forced: "min2", the paper's min of two uniform draws on 1..max_op
    # (P(op = k) = (2(max_op - k) + 1) / max_op^2: op = max_op is 1 problem in max_op^2), or
    # "uniform" on 1..max_op (a flatter mix: more of the long problems).
    op_sampling: str = "min2"
    split_boundary: int = 17  # buckets 0..boundary-1 are train, boundary..22 test
    world: Optional[str] = None  # world JSON file; None = the default shipped with igsm
    families: Optional[list[int]] = None  # restrict to these families of the world
    n_groups: Optional[int] = None  # use only the first n groups of each category
    group_size: Optional[int] = None  # use only the first n names of each group
    # Retry data (Part 2.2, igsm.retry): before each solution sentence, with this probability (again
    # and again: a geometric number), a wrong step "Define A as BACK." is inserted; 0 = off.
    retry_rate: float = 0.0
    retry_kind: str = "retry"  # "retry": A not computable yet; "retry_weak": A defined later in the solution
    # retry_weak only: "next" (Part 2.2's default) may retract the very next step too; "later" only
    # the steps after it.
    retry_weak_from: str = "next"


GENERATOR_PRESETS: dict[str, GeneratorConfig] = {
    "med": GeneratorConfig(max_op=15, max_ip=20),
    "hard": GeneratorConfig(max_op=21, max_ip=28),
    # Small enough for a few minutes of CPU training: the shipped world of one-word names (one
    # family), two layers, at most 4 edges and op <= 4, so problems are ~80 word tokens long and
    # a parameter name is three tokens ("Costco", "'s", "Cereal"). op <= 4 rather than 3: more
    # two-step problems, fewer one-step ones (docs/measurements.md, "The tiny preset").
    "tiny": GeneratorConfig(
        max_op=4, max_ip=4, min_layers=2, max_layers=2, min_width=2, max_width=3,
        world="tiny", families=[0],
    ),
    # The one-GPU `small` recipe (configs/small.yaml, docs/gpu.md): every family of the one-word
    # world, up to 3 layers and 12 edges, op <= 6; ~150 word tokens per problem (95%: <= 234).
    "small": GeneratorConfig(max_op=6, max_ip=12, min_layers=2, max_layers=3, world="tiny"),
    # The one-hour CPU recipe (configs/small_cpu.yaml): small's world and structures (every family,
    # up to 3 layers: ~4x tiny's templates per op) at op <= 4 and ip <= 8, so problems stay short
    # (median 117 word tokens, 95%: <= 191) and a 256-token window holds about two.
    "small_cpu": GeneratorConfig(max_op=4, max_ip=8, min_layers=2, max_layers=3, world="tiny"),
}


def generator_preset(name: str, **overrides) -> GeneratorConfig:
    """A copy of a preset with some fields replaced (validated)."""
    if name not in GENERATOR_PRESETS:
        raise ConfigError(f"preset={name!r} is unknown; allowed: {sorted(GENERATOR_PRESETS)}")
    cfg = replace(GENERATOR_PRESETS[name], **overrides)
    validate_generator(cfg)
    return cfg


def require(ok: bool, key: str, value, allowed: str) -> None:
    """Raise ConfigError naming the key, the value and what is allowed, unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def validate_generator(cfg: GeneratorConfig, prefix: str = "") -> None:
    """Reject impossible generator settings up front, naming the key and what is allowed."""
    k = lambda name: prefix + name  # noqa: E731
    require(isinstance(cfg.max_op, int) and 1 <= cfg.max_op <= MAX_OP, k("max_op"), cfg.max_op,
            f"an integer in 1..{MAX_OP}")
    require(2 <= cfg.min_layers <= cfg.max_layers <= 4, k("min_layers/max_layers"),
            (cfg.min_layers, cfg.max_layers), "2 <= min_layers <= max_layers <= 4")
    require(2 <= cfg.min_width <= cfg.max_width <= 4, k("min_width/max_width"),
            (cfg.min_width, cfg.max_width), "2 <= min_width <= max_width <= 4")
    min_ip = (cfg.min_layers - 1) * cfg.min_width
    require(isinstance(cfg.max_ip, int) and cfg.max_ip >= min_ip, k("max_ip"), cfg.max_ip,
            f"an integer >= (min_layers - 1) * min_width = {min_ip}")
    require(cfg.op is None or (isinstance(cfg.op, int) and 1 <= cfg.op <= MAX_OP), k("op"), cfg.op,
            f"null or an integer in 1..{MAX_OP} (one solution letter per step)")
    require(cfg.fmt in ("pq", "qp"), k("fmt"), cfg.fmt, "'pq' or 'qp'")
    require(cfg.split in ("train", "test", "any"), k("split"), cfg.split, "'train', 'test' or 'any'")
    require(cfg.op_sampling in OP_SAMPLING, k("op_sampling"), cfg.op_sampling, f"one of {list(OP_SAMPLING)}")
    require(1 <= cfg.split_boundary <= 22, k("split_boundary"), cfg.split_boundary,
            "an integer in 1..22 (buckets below it are train, the rest test)")
    require(cfg.group_size is None or cfg.group_size >= cfg.max_width, k("group_size"), cfg.group_size,
            f"null or an integer >= max_width ({cfg.max_width})")
    require(cfg.n_groups is None or cfg.n_groups >= 1, k("n_groups"), cfg.n_groups, "null or >= 1")
    require(isinstance(cfg.retry_rate, (int, float)) and 0.0 <= cfg.retry_rate < 1.0, k("retry_rate"),
            cfg.retry_rate, "a float in [0, 1) (0 = no retries)")
    require(cfg.retry_kind in RETRY_KINDS, k("retry_kind"), cfg.retry_kind, f"one of {list(RETRY_KINDS)}")
    require(cfg.retry_weak_from in RETRY_WEAK_FROM, k("retry_weak_from"), cfg.retry_weak_from,
            f"one of {list(RETRY_WEAK_FROM)}")


__all__ = ["MAX_OP", "OP_SAMPLING", "ConfigError", "require", "GeneratorConfig", "GENERATOR_PRESETS",
           "generator_preset", "validate_generator"]
