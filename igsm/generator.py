"""``generate_problem(config, rng) -> Problem``: the whole iGSM generator in one pure call.

Draw the op target once (training distribution or forced), build a structure and a dependency
graph to exactly that op, optionally re-ask, keep it only if its solution template falls in the
requested split's hash buckets, then draw names and write the text.
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Optional

from .generator_config import GeneratorConfig, validate_generator
from .graph import reask, sample_dependencies, sample_structure
from .problem import Problem
from .render import render_problem, solution_template, template_hash
from .retry import add_retries
from .world import LAYERS_PER_FAMILY, World, load_world

N_BUCKETS = 23
MAX_ATTEMPTS = 4_000
# An op target is kept while attempts fail (so the train split's op histogram is exactly the
# op_sampling distribution); after this many misses it is redrawn: small ops can have no template
# in the test buckets at all (op = 1 has only two templates, both train), and "op <= N" test sets are then
# test-template problems of the training distribution. Forced ops are never redrawn.
REDRAW_OP_AFTER = 16


class GenerationError(RuntimeError):
    """The config asks for something the generator cannot build (e.g. op too large for ip)."""


@lru_cache(maxsize=32)
def _world_for(path: Optional[str], families: Optional[tuple], n_groups, group_size) -> World:
    world = load_world(path)
    if families is not None:
        bad = [f for f in families if not 0 <= f < len(world.families)]
        if bad:
            raise GenerationError(f"families={list(families)}: the world has families 0..{len(world.families) - 1}")
    return world.subset(families, n_groups, group_size)


def world_for(cfg: GeneratorConfig) -> World:
    """The (cached) world a config draws names from, with its subset knobs applied."""
    fams = tuple(cfg.families) if cfg.families is not None else None
    return _world_for(cfg.world, fams, cfg.n_groups, cfg.group_size)


def sample_op(cfg: GeneratorConfig, rng: random.Random) -> int:
    """Forced op, or the training distribution of ``cfg.op_sampling``: "min2", the paper's
    P(op = k) = (2(op_max - k) + 1) / op_max^2 (min of two uniform draws), or "uniform" on
    1..op_max (one draw)."""
    if cfg.op is not None:
        return cfg.op
    if cfg.op_sampling == "uniform":
        return rng.randint(1, cfg.max_op)
    return min(rng.randint(1, cfg.max_op), rng.randint(1, cfg.max_op))


def in_split(bucket: int, cfg: GeneratorConfig) -> bool:
    if cfg.split == "train":
        return bucket < cfg.split_boundary
    if cfg.split == "test":
        return bucket >= cfg.split_boundary
    return True


def generate_problem(cfg: GeneratorConfig, rng: random.Random, world: Optional[World] = None) -> Problem:
    """One problem, a pure function of the config and the random generator's state."""
    world = world if world is not None else world_for(cfg)
    s = sample_op(cfg, rng)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        if attempt % REDRAW_OP_AFTER == 0 and cfg.op is None:
            s = sample_op(cfg, rng)
        structure = sample_structure(cfg, s, rng)
        deps = sample_dependencies(structure, s, rng)
        if deps is None:
            continue
        if cfg.reask:
            deps = reask(deps, rng)
        thash = template_hash(solution_template(deps.equations, deps.solution_order, deps.values))
        if not in_split(thash % N_BUCKETS, cfg):
            continue
        family_index = rng.randrange(len(world.families))
        family = world.families[family_index]
        offset = rng.randint(0, LAYERS_PER_FAMILY - structure.d)
        names: list[list[str]] = []
        used: set[str] = set()
        for i, width in enumerate(structure.widths):
            _, group = rng.choice(family.layers[offset + i].groups)
            options = [x for x in group if x not in used]  # one name, one item per problem
            if len(options) < width:
                break
            chosen = rng.sample(options, width)
            used.update(chosen)
            names.append(chosen)
        else:
            problem = Problem(
                family=family_index,
                layer_offset=offset,
                categories=[family.layers[offset + i].category for i in range(structure.d)],
                names=names,
                children=structure.children,
                equations=deps.equations,
                definition_order=deps.definition_order,
                values=deps.values,
                question=deps.question,
                solution_order=deps.solution_order,
                statement_order=[],
                letters={},
                fmt=cfg.fmt,
                reask=cfg.reask,
                template_hash=thash,
            )
            render_problem(problem, rng)
            if cfg.retry_rate > 0:  # own derived stream: the problem itself does not change
                add_retries(problem, cfg.retry_rate, cfg.retry_kind, rng, cfg.retry_weak_from)
            return problem
    raise GenerationError(
        f"no problem with op={s} in split={cfg.split!r} found in {MAX_ATTEMPTS} attempts: either "
        f"max_ip={cfg.max_ip}, max_layers={cfg.max_layers}, max_width={cfg.max_width} leave too few "
        "parameters (raise them or lower op), or no solution template of this op falls in the "
        f"split's hash buckets (split_boundary={cfg.split_boundary}; op=1 has only train templates)")


def problem_rng(seed: int, *keys) -> random.Random:
    """The random generator of one indexed sample: the same keys give the same problem anywhere.

    ``random.Random`` seeded with a string hashes it with SHA-512, stable across processes.
    """
    return random.Random("igsm:" + ":".join(str(k) for k in (seed, *keys)))


def generate(cfg: GeneratorConfig, seed: int, index: int, stream: str = "") -> Problem:
    """The problem at ``index`` of the stream ``(cfg, seed, stream)``."""
    return generate_problem(cfg, problem_rng(seed, stream or cfg.split, index))


__all__ = ["generate_problem", "generate", "problem_rng", "world_for", "GenerationError", "validate_generator"]
