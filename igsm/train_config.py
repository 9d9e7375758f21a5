"""The training configs: everything ``python train.py`` reads, with its checks.

Defaults are the paper's iGSM-med recipe (docs/spec.md#16-the-papers-recipe); the YAML files in
``configs/`` override them (tiny.yaml is the default CPU run). Plain dataclasses that import no
torch and nothing above the core layer (docs/architecture.md): the checks that generate problems
to judge a setting (does ``data.context`` drop too many problems, can each evaluation bucket be
drawn) need the generator, so they run where the data is set up, in :mod:`igsm.data_setup`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import ClassVar, NamedTuple, Optional

from .generator_config import GENERATOR_PRESETS, MAX_OP, GeneratorConfig, require, validate_generator
from .tokenizer import TOKENIZER_NAMES


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
    # Canon layers (Part 4.1, Allen-Zhu 2025): a causal depthwise convolution over the last
    # canon_kernel positions, added back to its stream (h + conv(h)), at any subset of four places
    # per block: A on the attention's input (after ln_1), B on the q, k, v projections (before
    # RoPE), C on the MLP's input (after ln_2), D on the MLP's hidden layer (before GELU).
    # "" = none: the paper's GPT-2. E.g. "ABCD" or "AC".
    canon: str = ""
    canon_kernel: int = 4
    # Dims of each head that RoPE rotates (the first rope_dim; the rest carry no position):
    # None = the whole head; 0 = no position embedding at all (NoPE). Part 4.1 pairs Canon with
    # a quarter of the head.
    rope_dim: Optional[int] = None

    @property
    def d_model(self) -> int:
        return self.n_embd if self.n_embd is not None else 64 * self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def rotary_dim(self) -> int:
        """How many dims of each head RoPE rotates (``rope_dim`` resolved)."""
        return self.head_dim if self.rope_dim is None else self.rope_dim


CANON_POSITIONS = "ABCD"


def validate_model(cfg: ModelConfig, prefix: str = "model.") -> None:
    require(cfg.n_layer >= 1, prefix + "n_layer", cfg.n_layer, "an integer >= 1")
    require(cfg.n_head >= 1, prefix + "n_head", cfg.n_head, "an integer >= 1")
    d = cfg.d_model
    require(d % cfg.n_head == 0, prefix + "n_embd", cfg.n_embd, f"a multiple of n_head ({cfg.n_head})")
    hd = d // cfg.n_head
    if cfg.rope_dim is None:
        require(hd % 2 == 0, prefix + "n_embd", cfg.n_embd,
                f"a multiple of n_head ({cfg.n_head}) with an even head size (RoPE rotates pairs), or set "
                "model.rope_dim")
    else:
        require(isinstance(cfg.rope_dim, int) and 0 <= cfg.rope_dim <= hd and cfg.rope_dim % 2 == 0,
                prefix + "rope_dim", cfg.rope_dim,
                f"null (the whole head) or an even integer in 0..{hd} (the head size; RoPE rotates pairs, 0 = NoPE)")
    canon = cfg.canon if isinstance(cfg.canon, str) else None
    require(canon is not None and all(c in CANON_POSITIONS for c in canon) and len(set(canon)) == len(canon),
            prefix + "canon", cfg.canon,
            f"a string of distinct letters from {CANON_POSITIONS!r} ('' = no Canon layers)")
    require(isinstance(cfg.canon_kernel, int) and cfg.canon_kernel >= 1, prefix + "canon_kernel",
            cfg.canon_kernel, "an integer >= 1 (positions each Canon layer mixes; 4 in Part 4.1)")
    require(0.0 <= cfg.dropout < 1.0, prefix + "dropout", cfg.dropout, "a float in [0, 1)")
    require(cfg.block_size >= 16, prefix + "block_size", cfg.block_size, "an integer >= 16")


# Evaluation buckets per generator preset (docs/training.md; the paper's: docs/spec.md#16-the-papers-recipe).
# Grammar of one bucket:
#   "<=N"     op drawn from the training distribution with max_op = N (op ≤ N)
#   "N"       op forced to N (the paper's "op = N" test sets, also beyond max_op)
#   "reaskN"  op forced to N, then the question re-asked (docs/spec.md#9-reask)
#   ":train" or ":any" after any of these: templates of that split instead of the test split.
# op = 1 has no test-split template in any preset (its few templates all hash below the split
# boundary), so tiny's easiest bucket uses the train templates (new problems, seen templates).
EVAL_BUCKETS: dict[str, list[str]] = {
    "med": ["<=15", "15", "20", "21", "22", "23", "reask20"],
    "hard": ["<=21", "21", "28", "29", "30", "31", "32", "reask28"],
    # op = 1 has no test template (docs/spec.md#10-the-template-hash-and-the-split), so tiny's easiest
    # test bucket "<=2" holds only the op = 2 "N more than X" form; "<=2:train" and "2:train" are
    # fresh problems of seen templates.
    "tiny": ["<=2:train", "2:train", "<=2", "<=4", "3", "4", "6", "reask4"],
    # in distribution (seen and unseen templates), op = max_op, out of distribution up to 10
    "small": ["<=6:train", "<=6", "6", "7", "8", "10", "reask6"],
    "small_cpu": ["<=4:train", "<=4", "4", "5", "6", "reask4"],
}

LOSS_ON = ("all", "solution")
LETTER_LOSS = ("sampled", "uniform")
RETRY_LOSS = ("full", "mask")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
# Single-file checkpoint strategies only (igsm.trainer saves checkpoints atomically itself);
# the largest model of the paper (~300M parameters) fits on one GPU, so DDP is all we need.
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_find_unused_parameters_true")
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")


@dataclass
class DataConfig(GeneratorConfig):
    """Training data: generator knobs (inherited; ``preset`` chooses their base values), tokens, batches.

    Precedence for the generator fields: these dataclass defaults < ``GENERATOR_PRESETS[preset]``
    < YAML < command line, so ``data.preset=med data.max_op=21`` is med with op_max 21.
    """

    preset: str = "med"  # the GENERATOR_PRESETS entry whose values are the base of the fields above
    tokenizer: str = "gpt2"  # "gpt2" (the paper's BPE) or "word" (closed vocabulary, small runs)
    context: int = 768  # packing window in tokens; a longer problem is dropped
    batch_size: int = 64  # sequences per device per forward pass (micro-batch)
    # Sequences per optimizer step over all devices and accumulation; None = batch_size * devices
    # * num_nodes * trainer.accumulate_grad_batches. When set, the accumulation is derived from it.
    global_batch_size: Optional[int] = 512
    loss_on: str = "all"  # "all" tokens (the paper) or "solution" (solution + answer + eos only)
    # Target where a solution names a new letter ("Define X as v"): "sampled" = the letter the
    # generator drew (the paper); "uniform" = the distribution it drew from, uniform over the
    # problem's unused letters (docs/spec.md#7-the-text). Same expected gradient without the draw's noise: small
    # models then learn not to reuse a letter, which greedy decoding otherwise exposes.
    letter_loss: str = "sampled"
    # No loss on a problem whose beginning lies in an earlier window: the model cannot see its
    # statements, so its solution tokens are guesses (a quarter of them at context 256 in tiny).
    whole_problems_only: bool = False
    # Retry data (data.retry_rate / data.retry_kind, igsm.retry): "full" trains on every token of a
    # wrong step "Define A as BACK."; "mask" puts no loss on its "Define A as" (BACK keeps its loss).
    # Part 2.2 finds masking unnecessary.
    retry_loss: str = "full"
    num_workers: int = 4  # DataLoader worker processes generating problems (0 = in the main process)
    prefetch_batches: int = 4  # batches each worker keeps ready (DataLoader prefetch_factor)


@dataclass
class OptimConfig:
    """AdamW (or Muon + AdamW) with linear warm-up then cosine decay, stepped every optimizer step
    (the paper's: docs/spec.md#16-the-papers-recipe)."""

    # "adamw": AdamW on every parameter (the paper). "muon": torch.optim.Muon (torch >= 2.9) on the
    # 2-D weights of the hidden nn.Linear layers, AdamW (lr, betas, eps above) on the rest: the tied
    # embedding / output head, norms, biases, Canon convolutions. One schedule scales both lrs.
    name: str = "adamw"
    lr: float = 2e-3  # peak learning rate (of AdamW; with name=muon, of the non-matrix parameters)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.05  # on matmul weights only: no decay for biases, LayerNorm, embeddings
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.01  # the cosine ends at min_lr_ratio * lr at trainer.max_steps
    grad_clip: Optional[float] = 1.0  # max global gradient norm; None = no clipping
    # A step whose loss or gradient norm is not finite: "stop" the run there (exit 1, naming the
    # step; the checkpoints on disk stay as they were) or "skip" its update, at most
    # max_nonfinite_skips times in the run (then stop). docs/faults.md.
    on_nonfinite: str = "stop"
    max_nonfinite_skips: int = 10
    # name=muon only. Peak lr of the Muon matrices, on the same schedule: Keller Jordan's 0.02 (the
    # torch.optim.Muon doc example) under torch's default "original" shape scaling, lr x
    # sqrt(max(1, fan_out / fan_in)); an update is orthogonalised (spectral norm ~1), so this lr is
    # not comparable to optim.lr. Weight decay: optim.weight_decay, decoupled (x muon lr).
    # Momentum: Nesterov, torch's and Keller's default 0.95.
    muon_lr: float = 0.02
    muon_momentum: float = 0.95


OPTIMIZERS = ("adamw", "muon")
MUON_MIN_TORCH = "2.9"  # the first torch release with torch.optim.Muon


@dataclass
class TrainerConfig:
    """What Lightning's Trainer gets (see igsm.trainer.build_trainer)."""

    max_steps: int = 100_000  # optimizer steps
    accelerator: str = "auto"
    devices: int = 1  # devices per node
    num_nodes: int = 1
    strategy: str = "auto"  # "ddp" for several devices
    # None = auto: "bf16-mixed" on GPU and on CPUs with native bf16 (AVX512-BF16 or AMX), else "32-true"
    # (bf16 emulated on an AVX2-only CPU is ~8x slower than fp32; igsm.trainer.resolve_precision)
    precision: Optional[str] = None
    accumulate_grad_batches: Optional[int] = None  # None = from data.global_batch_size, else 1
    log_every_n_steps: int = 50
    eval_every: Optional[int] = 10_000  # steps between evaluations; None = only the final one
    checkpoint_every: int = 5_000  # steps between checkpoints (each also refreshes last.ckpt)
    enable_progress_bar: bool = True
    # Intra-op threads of the training process (torch.set_num_threads); None = torch's default (one
    # per core). On a small CPU shared with DataLoader workers or other jobs, fewer threads than
    # cores avoids OpenMP threads spinning against each other (measured: 4x faster with 1 than 2
    # on a busy 2-core machine).
    cpu_threads: Optional[int] = None


@dataclass
class EvalConfig:
    """Evaluation by greedy decoding graded with the full-solution verifier (docs/spec.md#12-verification)."""

    n: int = 4096  # problems per bucket (the paper's 4,096)
    batch_size: int = 256  # prompts decoded together
    max_new_tokens: int = 1024  # generation budget per problem (also capped by model.block_size)
    buckets: Optional[list[str]] = None  # None = EVAL_BUCKETS[data.preset]; grammar above
    examples: int = 2  # decoded examples per bucket written to TensorBoard as text
    # Right after "as", greedy decoding skips letters the solution already defined. Off = the
    # paper's plain greedy. A letter is a uniform draw (docs/spec.md#7-the-text), so greedy's pick there is the
    # model's tiny bias; small models reuse letters long after they reason right (error kind
    # "redefined" in eval.json). The letter is only a name: the grading stays strict.
    fresh_letters: bool = False
    seed: int = 0  # the evaluation sets depend on this, not on the training seed
    final: bool = True  # evaluate when training ends


@dataclass
class TrainConfig:
    """Everything ``python train.py`` reads (docs/training.md). ``preset`` picks ``configs/<preset>.yaml``."""

    ENTRY_POINT: ClassVar[str] = "train.py"  # whose presets it accepts (igsm.cli_config.preset_entry_point)

    name: Optional[str] = None  # run name: logs/<name>/version_N; None = the preset's name
    preset: str = "tiny"
    config: Optional[str] = None  # a YAML file applied after the preset, before the command line
    print_config: bool = False  # print the resolved config and exit
    ckpt_path: Optional[str] = None  # "last" = latest run of this name, or a .ckpt file
    seed: int = 0
    log_root: str = "logs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def resolve(self) -> None:
        """Fill the defaults that depend on other keys (called by load_config before validate)."""
        if self.name is None:
            self.name = self.preset
        if self.eval.buckets is None and self.data.preset in EVAL_BUCKETS:
            self.eval.buckets = list(EVAL_BUCKETS[self.data.preset])

    def validate(self) -> None:
        validate_train(self)


class BucketSpec(NamedTuple):
    """One parsed evaluation bucket (grammar at EVAL_BUCKETS)."""

    spec: str  # as written in the config
    op: int  # N of "<=N", "N" or "reaskN"
    up_to: bool  # True for "<=N": op drawn from the training distribution with max_op = N
    reask: bool
    split: str  # "test" (default), "train" or "any"

    @property
    def label(self) -> str:
        """Name in TensorBoard tags and eval.json: op<=15, op=20, reask_op=20, train_op<=2."""
        name = ("reask_" if self.reask else "") + ("op<=" if self.up_to else "op=") + str(self.op)
        return name if self.split == "test" else f"{self.split}_{name}"


def parse_bucket(spec: str, key: str = "eval.buckets") -> BucketSpec:
    allowed = "'<=N', 'N' or 'reaskN' (N >= 1), optionally followed by ':train' or ':any'"
    require(isinstance(spec, str), key, spec, allowed)
    body, _, split = spec.partition(":")
    split = split or "test"
    reask = body.startswith("reask")
    up_to = body.startswith("<=")
    digits = body[5:] if reask else body[2:] if up_to else body
    require(digits.isdigit() and int(digits) >= 1 and split in ("test", "train", "any"), key, spec, allowed)
    require(int(digits) <= MAX_OP, key, spec, f"op at most {MAX_OP}")
    return BucketSpec(spec, int(digits), up_to, reask, split)


def accumulation(cfg: TrainConfig) -> int:
    """Micro-batches per optimizer step: explicit, or data.global_batch_size / sequences per step."""
    if cfg.trainer.accumulate_grad_batches is not None:
        return cfg.trainer.accumulate_grad_batches
    if cfg.data.global_batch_size is None:
        return 1
    per_pass = cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.num_nodes
    return max(1, cfg.data.global_batch_size // per_pass)


def validate_train(cfg: TrainConfig) -> None:
    """Every group of a TrainConfig; raises ConfigError naming the first bad key."""
    require(bool(cfg.name) and all(part not in ("", ".", "..") for part in cfg.name.split("/"))
            and not any(c.isspace() for c in cfg.name), "name", cfg.name,
            "a non-empty run name without spaces ('/' makes sub-folders)")
    require(cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    validate_model(cfg.model, "model.")
    validate_data(cfg.data, "data.")
    require(cfg.model.block_size >= cfg.data.context, "model.block_size", cfg.model.block_size,
            f"an integer >= data.context ({cfg.data.context})")
    validate_optim(cfg.optim, "optim.")
    validate_trainer(cfg.trainer, "trainer.")
    d, t = cfg.data, cfg.trainer
    if d.global_batch_size is not None:
        per_pass = d.batch_size * t.devices * t.num_nodes
        acc = t.accumulate_grad_batches
        require(d.global_batch_size % per_pass == 0 and (acc is None or acc * per_pass == d.global_batch_size),
                "data.global_batch_size", d.global_batch_size,
                f"a multiple of data.batch_size * trainer.devices * trainer.num_nodes = {per_pass}"
                + ("" if acc is None else f" equal to that times trainer.accumulate_grad_batches ({acc});"
                  " set one of the two to null"))
    require(not (t.precision in ("16-mixed", "16-true") and t.accelerator == "cpu"), "trainer.precision",
            t.precision, "'32-true', 'bf16-mixed' or null on CPU (float16 needs a GPU)")
    validate_eval(cfg.eval, "eval.")


def validate_data(cfg: DataConfig, prefix: str = "data.") -> None:
    require(cfg.preset in GENERATOR_PRESETS, prefix + "preset", cfg.preset, f"one of {sorted(GENERATOR_PRESETS)}")
    validate_generator(cfg, prefix)
    require(cfg.split in ("train", "any"), prefix + "split", cfg.split,
            "'train' or 'any' (the test templates are kept for evaluation)")
    require(cfg.tokenizer in TOKENIZER_NAMES, prefix + "tokenizer", cfg.tokenizer, f"one of {list(TOKENIZER_NAMES)}")
    require(cfg.context >= 16, prefix + "context", cfg.context, "an integer >= 16")
    require(cfg.batch_size >= 1, prefix + "batch_size", cfg.batch_size, "an integer >= 1")
    require(cfg.global_batch_size is None or cfg.global_batch_size >= 1, prefix + "global_batch_size",
            cfg.global_batch_size, "null or an integer >= 1")
    require(cfg.loss_on in LOSS_ON, prefix + "loss_on", cfg.loss_on, f"one of {list(LOSS_ON)}")
    require(cfg.letter_loss in LETTER_LOSS, prefix + "letter_loss", cfg.letter_loss, f"one of {list(LETTER_LOSS)}")
    require(cfg.retry_loss in RETRY_LOSS, prefix + "retry_loss", cfg.retry_loss, f"one of {list(RETRY_LOSS)}")
    require(cfg.num_workers >= 0, prefix + "num_workers", cfg.num_workers, "an integer >= 0")
    require(cfg.prefetch_batches >= 1, prefix + "prefetch_batches", cfg.prefetch_batches, "an integer >= 1")


def validate_optim(cfg: OptimConfig, prefix: str = "optim.") -> None:
    require(cfg.name in OPTIMIZERS, prefix + "name", cfg.name, f"one of {list(OPTIMIZERS)}")
    if cfg.name == "muon":
        import torch  # only here: the configs import no torch

        require(hasattr(torch.optim, "Muon"), prefix + "name", cfg.name,
                f"'adamw' with torch {torch.__version__}: torch.optim.Muon needs torch >= {MUON_MIN_TORCH}")
    require(cfg.lr > 0, prefix + "lr", cfg.lr, "a float > 0")
    require(cfg.muon_lr > 0, prefix + "muon_lr", cfg.muon_lr, "a float > 0")
    require(0 <= cfg.muon_momentum < 1, prefix + "muon_momentum", cfg.muon_momentum, "a float in [0, 1)")
    require(len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas), prefix + "betas", list(cfg.betas),
            "two floats in [0, 1)")
    require(cfg.eps > 0, prefix + "eps", cfg.eps, "a float > 0")
    require(cfg.weight_decay >= 0, prefix + "weight_decay", cfg.weight_decay, "a float >= 0")
    require(cfg.warmup_steps >= 0, prefix + "warmup_steps", cfg.warmup_steps, "an integer >= 0")
    require(0 <= cfg.min_lr_ratio <= 1, prefix + "min_lr_ratio", cfg.min_lr_ratio, "a float in [0, 1]")
    require(cfg.grad_clip is None or cfg.grad_clip > 0, prefix + "grad_clip", cfg.grad_clip, "null or a float > 0")
    require(cfg.on_nonfinite in ("stop", "skip"), prefix + "on_nonfinite", cfg.on_nonfinite, "'stop' or 'skip'")
    require(cfg.max_nonfinite_skips >= 0, prefix + "max_nonfinite_skips", cfg.max_nonfinite_skips, "an integer >= 0")


def validate_trainer(cfg: TrainerConfig, prefix: str = "trainer.") -> None:
    require(cfg.max_steps >= 1, prefix + "max_steps", cfg.max_steps, "an integer >= 1")
    require(cfg.accelerator in ACCELERATORS, prefix + "accelerator", cfg.accelerator, f"one of {list(ACCELERATORS)}")
    require(cfg.devices >= 1, prefix + "devices", cfg.devices, "an integer >= 1 (devices per node)")
    require(cfg.num_nodes >= 1, prefix + "num_nodes", cfg.num_nodes, "an integer >= 1")
    require(cfg.strategy in STRATEGIES, prefix + "strategy", cfg.strategy, f"one of {list(STRATEGIES)}")
    require(cfg.precision is None or cfg.precision in PRECISIONS, prefix + "precision", cfg.precision,
            f"null (auto) or one of {list(PRECISIONS)}")
    require(cfg.accumulate_grad_batches is None or cfg.accumulate_grad_batches >= 1,
            prefix + "accumulate_grad_batches", cfg.accumulate_grad_batches, "null or an integer >= 1")
    require(cfg.log_every_n_steps >= 1, prefix + "log_every_n_steps", cfg.log_every_n_steps, "an integer >= 1")
    require(cfg.eval_every is None or cfg.eval_every >= 1, prefix + "eval_every", cfg.eval_every,
            "null (final evaluation only) or an integer >= 1")
    require(cfg.checkpoint_every >= 1, prefix + "checkpoint_every", cfg.checkpoint_every, "an integer >= 1")
    require(cfg.cpu_threads is None or cfg.cpu_threads >= 1, prefix + "cpu_threads", cfg.cpu_threads,
            "null (torch's default) or an integer >= 1")


def validate_eval(cfg: EvalConfig, prefix: str = "eval.") -> None:
    require(cfg.n >= 1, prefix + "n", cfg.n, "an integer >= 1 (problems per bucket)")
    require(cfg.batch_size >= 1, prefix + "batch_size", cfg.batch_size, "an integer >= 1")
    require(cfg.max_new_tokens >= 1, prefix + "max_new_tokens", cfg.max_new_tokens, "an integer >= 1")
    require(cfg.examples >= 0, prefix + "examples", cfg.examples, "an integer >= 0")
    require(cfg.seed >= 0, prefix + "seed", cfg.seed, "an integer >= 0")
    require(cfg.buckets is not None and len(cfg.buckets) >= 1, prefix + "buckets", cfg.buckets,
            f"a non-empty list (null = the data preset's, known for {sorted(EVAL_BUCKETS)})")
    labels = [parse_bucket(b, prefix + "buckets").label for b in cfg.buckets]
    require(len(set(labels)) == len(labels), prefix + "buckets", cfg.buckets, "no bucket twice")


def generator_config(cfg: DataConfig) -> GeneratorConfig:
    """The GeneratorConfig part of a DataConfig (the training stream's generator)."""
    return GeneratorConfig(**{f.name: getattr(cfg, f.name) for f in fields(GeneratorConfig)})


def bucket_generator_config(cfg: DataConfig, bucket: BucketSpec) -> GeneratorConfig:
    """The generator of one evaluation bucket: the training data's world and sizes, the bucket's
    op rule and split. For "<=N" the op is drawn by the caller (see igsm.data), always from the
    paper's min-of-two mix whatever data.op_sampling says, so runs that differ in their training
    op mix are graded on the same problems."""
    base = generator_config(cfg)
    if bucket.up_to:
        return replace(base, max_op=bucket.op, op=None, reask=False, split=bucket.split, op_sampling="min2")
    return replace(base, op=bucket.op, reask=bucket.reask, split=bucket.split)


__all__ = [
    "ModelConfig", "CANON_POSITIONS", "validate_model", "EVAL_BUCKETS", "DataConfig", "OptimConfig", "OPTIMIZERS",
    "TrainerConfig", "EvalConfig", "TrainConfig", "BucketSpec", "parse_bucket", "accumulation", "validate_train",
    "validate_data", "validate_optim", "validate_trainer", "validate_eval", "generator_config",
    "bucket_generator_config",
]
