"""The probing configs: everything ``python probe.py`` reads, with its checks.

The dataclass defaults are the paper's probe recipe (docs/spec.md#16-the-papers-recipe: AdamW lr
0.002, no warm-up, linear decay to 0, weight decay 0.01, batch 256, 100k steps);
configs/probe_tiny.yaml is the default CPU run, probe_med.yaml / probe_hard.yaml the paper's. The
task names are :mod:`igsm.probe_tasks`' (shared with the labels, :mod:`probing.labels`); the
Lightning trainer settings are training's (:class:`igsm.train_config.TrainerConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from .generator_config import MAX_OP, require
from .probe_tasks import ALL_TASKS, TASKS
from .train_config import TrainerConfig, validate_trainer

PROBE_LAYERS = ("last", "all")
PROBE_CONTROLS = ("none", "random_init", "both")
PROBE_TEST_SPLITS = ("test", "train")


@dataclass
class ProbeOptions:
    """The V-probe: tasks, heads, controls, and its optimiser (linear decay to 0 over max_steps)."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS))  # the six; "regret" on request
    layers: str = "last"  # "last": one head on the last layer; "all": one head per layer too
    control: str = "both"  # "none": trained backbone only; "random_init": the control only; "both"
    rank: int = 8  # rank of the embedding update U V
    # (position, A[, B]) pairs per task per step over all devices (hard: 128), split evenly among
    # them like data.global_batch_size: 8 GPUs each take 1/8 and finish ~8x sooner
    batch_size: int = 256
    draws: int = 10  # (position, A[, B]) draws per problem per task (repeats dropped)
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.999)
    v_init_std: float = 0.02  # V ~ N(0, std); U starts at zero so the probe starts as the frozen model
    train_problems: int = 0  # training problems per task; 0 = as many as max_steps consume (none twice)
    test_problems: int = 512  # test problems per task (about 9.5 distinct pairs each: >= 4,096 pairs)
    num_workers: int = 4  # DataLoader workers per task loader
    checkpoint_activations: bool = True  # recompute backbone passes in the backward (GPU memory)
    # Run each batch as this many length-sorted chunks, each cut to its longest row (less padding,
    # more passes). null = auto: 4 on GPU (med rows average 260-340 tokens in batches padded to
    # 500-790), 1 on CPU (the tiny default's rows are short and alike).
    length_chunks: Optional[int] = None
    analysis: bool = False  # run the error analysis (docs/spec.md#14-error-analysis) after probing
    # Controls that bound what a probe result means (docs/probing-controls.md)
    test_split: str = "test"  # test pairs from "test"-template problems, or fresh "train"-template problems
    split_by_solved: bool = False  # also split test accuracy by whether the backbone solves the problem
    positive_control: bool = False  # also probe, per task, a backbone copy fine-tuned to hold the label
    positive_steps: int = 300  # fine-tuning steps of each positive-control copy (batch_size pairs each)
    positive_lr: float = 1.0e-3  # its AdamW learning rate (linear decay to 0, no weight decay)
    shuffle_labels: bool = False  # negative control: every label taken from a random pair of another problem


@dataclass
class AnalysisConfig:
    """Error analysis (docs/spec.md#14-error-analysis): greedy generations graded by the verifier vs
    probe predictions."""

    n: int = 1024  # problems per analysed set (reask set and in-distribution test set)
    reask_op: Optional[int] = None  # op of the reask problems; None = the training data's max_op
    batch_size: int = 256  # prompts decoded together
    max_new_tokens: int = 1024


@dataclass
class ProbeConfig:
    """Everything ``python probe.py`` reads (docs/probing.md). ``preset`` picks ``configs/<preset>.yaml``."""

    ENTRY_POINT: ClassVar[str] = "probe.py"  # whose presets it accepts (igsm.cli_config.preset_entry_point)

    name: Optional[str] = None  # run name: logs/<name>/version_N; None = "<checkpoint's run name>_probe"
    preset: str = "probe_tiny"
    config: Optional[str] = None  # a YAML file applied after the preset, before the command line
    print_config: bool = False
    # train.py checkpoint or exported transformers folder; None = newest last.ckpt under log_root
    ckpt: Optional[str] = None
    # Resume an interrupted probe run: "last" = the newest checkpoint of the newest run of this name
    # (same folder, same TensorBoard curves; docs/faults.md), or a probe run's .ckpt file
    ckpt_path: Optional[str] = None
    seed: int = 0  # probe data, random-init control and probe initialisation
    log_root: str = "logs"
    probe: ProbeOptions = field(default_factory=ProbeOptions)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        validate_probe(self)


def validate_probe(cfg: ProbeConfig) -> None:
    """Every group of a ProbeConfig; raises ConfigError naming the first bad key."""
    require(cfg.name is None or (bool(cfg.name) and not any(c.isspace() for c in cfg.name)
                                and all(part not in ("", ".", "..") for part in cfg.name.split("/"))),
           "name", cfg.name, "null or a non-empty run name without spaces")
    require(cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    require(cfg.ckpt_path is None or bool(cfg.ckpt_path), "ckpt_path", cfg.ckpt_path,
            "null, 'last' or a probe run's .ckpt file")
    p = cfg.probe
    allowed = ALL_TASKS
    require(len(p.tasks) >= 1 and all(t in allowed for t in p.tasks) and len(set(p.tasks)) == len(p.tasks),
            "probe.tasks", p.tasks, f"a non-empty list of distinct tasks from {list(allowed)}")
    require(p.layers in PROBE_LAYERS, "probe.layers", p.layers, f"one of {list(PROBE_LAYERS)}")
    require(p.control in PROBE_CONTROLS, "probe.control", p.control, f"one of {list(PROBE_CONTROLS)}")
    require(p.rank >= 1, "probe.rank", p.rank, "an integer >= 1")
    require(p.batch_size >= 1, "probe.batch_size", p.batch_size, "an integer >= 1")
    require(p.draws >= 1, "probe.draws", p.draws, "an integer >= 1")
    require(p.lr > 0, "probe.lr", p.lr, "a float > 0")
    require(p.weight_decay >= 0, "probe.weight_decay", p.weight_decay, "a float >= 0")
    require(p.warmup_steps >= 0, "probe.warmup_steps", p.warmup_steps, "an integer >= 0")
    require(len(p.betas) == 2 and all(0 <= b < 1 for b in p.betas), "probe.betas", list(p.betas),
            "two floats in [0, 1)")
    require(p.v_init_std > 0, "probe.v_init_std", p.v_init_std, "a float > 0")
    require(p.train_problems >= 0, "probe.train_problems", p.train_problems, "an integer >= 0 (0 = from max_steps)")
    require(p.test_problems >= 1, "probe.test_problems", p.test_problems, "an integer >= 1")
    require(p.num_workers >= 0, "probe.num_workers", p.num_workers, "an integer >= 0")
    require(p.length_chunks is None or p.length_chunks >= 1, "probe.length_chunks", p.length_chunks,
            "null (auto: 4 on GPU, 1 on CPU) or an integer >= 1")
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    require(p.batch_size % world == 0, "probe.batch_size", p.batch_size,
            f"a multiple of trainer.devices * trainer.num_nodes = {world} (the batch is global, split among devices)")
    require(p.test_split in PROBE_TEST_SPLITS, "probe.test_split", p.test_split, f"one of {list(PROBE_TEST_SPLITS)}")
    require(p.positive_steps >= 1, "probe.positive_steps", p.positive_steps, "an integer >= 1")
    require(p.positive_lr > 0, "probe.positive_lr", p.positive_lr, "a float > 0")
    a = cfg.analysis
    require(a.n >= 1, "analysis.n", a.n, "an integer >= 1")
    require(a.reask_op is None or 1 <= a.reask_op <= MAX_OP, "analysis.reask_op", a.reask_op,
            f"null or an integer in 1..{MAX_OP}")
    require(a.batch_size >= 1, "analysis.batch_size", a.batch_size, "an integer >= 1")
    require(a.max_new_tokens >= 1, "analysis.max_new_tokens", a.max_new_tokens, "an integer >= 1")
    validate_trainer(cfg.trainer, "trainer.")
    require(not (cfg.trainer.precision in ("16-mixed", "16-true") and cfg.trainer.accelerator == "cpu"),
            "trainer.precision", cfg.trainer.precision, "'32-true', 'bf16-mixed' or null on CPU")


__all__ = ["PROBE_LAYERS", "PROBE_CONTROLS", "PROBE_TEST_SPLITS", "ProbeOptions", "AnalysisConfig", "ProbeConfig",
           "validate_probe"]
