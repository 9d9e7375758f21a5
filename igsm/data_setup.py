"""Setting up the training data from its config, torch-free: the tokenizer, and the checks that generate.

Two checks of a training config need problems to judge it, so they live here with the generator
rather than in the config dataclasses (:mod:`igsm.train_config` imports nothing above the core
layer, docs/architecture.md): a packing window that would drop too many problems, and an
evaluation bucket the generator cannot draw. :func:`check_generation` runs them for
:func:`igsm.cli_config.load_config` right after the config's own ``validate()``, so a bad value
still fails before anything runs, with the same one-line :class:`~igsm.config.ConfigError`.
"""

from __future__ import annotations

from .generator import GenerationError, generate_problem, problem_rng, world_for
from .generator_config import ConfigError, require
from .tokenizer import Tokenizer, build_tokenizer
from .train_config import DataConfig, EvalConfig, TrainConfig, bucket_generator_config, generator_config, parse_bucket


def build_data_tokenizer(cfg: DataConfig) -> Tokenizer:
    """The tokenizer of a data config. The word tokenizer's vocabulary is built from the world
    subset the config draws names from, so small worlds give small embedding tables."""
    world = world_for(generator_config(cfg)) if cfg.tokenizer == "word" else None
    return build_tokenizer(cfg.tokenizer, world=world)


LENGTH_SAMPLE = 256  # training problems sampled to check data.context against problem lengths
MAX_DROPPED = 0.05  # at most this share of training problems may be longer than the window


def check_data_lengths(cfg: DataConfig, prefix: str = "data.") -> None:
    """Reject a packing window that would drop more than 5% of the training problems.

    The paper's own windows are shorter than the longest problems (med: 768 vs 869 GPT-2 tokens),
    so "context >= longest problem" would be wrong; what matters is how many problems are lost.
    Samples LENGTH_SAMPLE problems with a fixed seed (~0.3 s).
    """
    gen = generator_config(cfg)
    tokenizer = build_data_tokenizer(cfg)
    lengths = []
    for i in range(LENGTH_SAMPLE):
        try:
            p = generate_problem(gen, problem_rng(0, "length-check", i))
        except GenerationError as e:
            raise ConfigError(f"{prefix}preset={cfg.preset!r} with these data.* settings cannot generate "
                              f"training problems: {e}") from None
        lengths.append(len(tokenizer.encode_example(p.problem_text, p.solution, p.answer)))
    lengths.sort()
    dropped = sum(n > cfg.context for n in lengths) / len(lengths)
    needed = lengths[int(len(lengths) * (1 - MAX_DROPPED)) - 1]
    require(dropped <= MAX_DROPPED, prefix + "context", cfg.context,
            f"an integer >= {needed}: {dropped:.0%} of sampled training problems are longer "
            f"(longest {lengths[-1]} {cfg.tokenizer} tokens) and would be dropped")


def check_buckets_generate(data: DataConfig, ev: EvalConfig, key: str = "eval.buckets") -> None:
    """Generate one problem per forced-op bucket, so an impossible op fails now, not mid-run."""
    for spec in ev.buckets:
        b = parse_bucket(spec, key)
        if b.up_to:
            continue  # ops without templates in the split are skipped when the set is drawn
        try:
            generate_problem(bucket_generator_config(data, b), problem_rng(0, "bucket-check", spec))
        except GenerationError as e:
            raise ConfigError(f"{key}: {spec!r} is not allowed with data.preset={data.preset!r}: {e}") from None


def check_generation(cfg: object) -> None:
    """The checks of a loaded config that generate problems; a no-op for a config without training
    data (probe.py's). Raises ConfigError naming the key, like ``validate()``."""
    if isinstance(cfg, TrainConfig):
        check_data_lengths(cfg.data, "data.")
        check_buckets_generate(cfg.data, cfg.eval, "eval.buckets")


__all__ = ["build_data_tokenizer", "check_data_lengths", "check_buckets_generate", "check_generation",
           "LENGTH_SAMPLE", "MAX_DROPPED"]
