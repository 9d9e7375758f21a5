"""Dataclass configs: the one place where every default lives.

Plain dataclasses (no torch, no omegaconf at import) so the generator can use them anywhere.
YAML files in ``configs/`` and command-line dotlists only override these fields;
:func:`igsm.cli_config.load_config` merges them strictly (unknown keys and bad values fail).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import ClassVar, NamedTuple, Optional

MAX_OP = 52  # solution steps each take one of the 52 ASCII letters
OP_SAMPLING = ("min2", "uniform")  # GeneratorConfig.op_sampling
RETRY_KINDS = ("retry", "retry_weak")  # igsm.retry
RETRY_WEAK_FROM = ("next", "later")  # igsm.retry: retry_weak's pool starts at the next step, or after it


class ConfigError(ValueError):
    """A config value that is not allowed; the message names the key, the value and what is allowed."""


@dataclass
class GeneratorConfig:
    """Difficulty knobs of the iGSM generator (spec sections 2-8). Defaults: iGSM-med."""

    max_op: int = 15  # op_max: training op in 1..max_op, drawn as op_sampling says
    max_ip: int = 20  # ip_max: at most this many instance parameters (edges)
    min_layers: int = 2  # d, the number of layers, lies in [min_layers, max_layers] (2..4)
    max_layers: int = 4
    min_width: int = 2  # items per layer lie in [min_width, max_width] (2..4)
    max_width: int = 4
    op: Optional[int] = None  # force op = N (the paper's op=N test sets; may exceed max_op)
    reask: bool = False  # re-draw the question after generation (spec 8)
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
    _check(cfg.op_sampling in OP_SAMPLING, k("op_sampling"), cfg.op_sampling, f"one of {list(OP_SAMPLING)}")
    _check(1 <= cfg.split_boundary <= 22, k("split_boundary"), cfg.split_boundary,
           "an integer in 1..22 (buckets below it are train, the rest test)")
    _check(cfg.group_size is None or cfg.group_size >= cfg.max_width, k("group_size"), cfg.group_size,
           f"null or an integer >= max_width ({cfg.max_width})")
    _check(cfg.n_groups is None or cfg.n_groups >= 1, k("n_groups"), cfg.n_groups, "null or >= 1")
    _check(isinstance(cfg.retry_rate, (int, float)) and 0.0 <= cfg.retry_rate < 1.0, k("retry_rate"),
           cfg.retry_rate, "a float in [0, 1) (0 = no retries)")
    _check(cfg.retry_kind in RETRY_KINDS, k("retry_kind"), cfg.retry_kind, f"one of {list(RETRY_KINDS)}")
    _check(cfg.retry_weak_from in RETRY_WEAK_FROM, k("retry_weak_from"), cfg.retry_weak_from,
           f"one of {list(RETRY_WEAK_FROM)}")


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
    _check(cfg.n_layer >= 1, prefix + "n_layer", cfg.n_layer, "an integer >= 1")
    _check(cfg.n_head >= 1, prefix + "n_head", cfg.n_head, "an integer >= 1")
    d = cfg.d_model
    _check(d % cfg.n_head == 0, prefix + "n_embd", cfg.n_embd, f"a multiple of n_head ({cfg.n_head})")
    hd = d // cfg.n_head
    if cfg.rope_dim is None:
        _check(hd % 2 == 0, prefix + "n_embd", cfg.n_embd,
               f"a multiple of n_head ({cfg.n_head}) with an even head size (RoPE rotates pairs), or set "
               "model.rope_dim")
    else:
        _check(isinstance(cfg.rope_dim, int) and 0 <= cfg.rope_dim <= hd and cfg.rope_dim % 2 == 0,
               prefix + "rope_dim", cfg.rope_dim,
               f"null (the whole head) or an even integer in 0..{hd} (the head size; RoPE rotates pairs, 0 = NoPE)")
    canon = cfg.canon if isinstance(cfg.canon, str) else None
    _check(canon is not None and all(c in CANON_POSITIONS for c in canon) and len(set(canon)) == len(canon),
           prefix + "canon", cfg.canon, f"a string of distinct letters from {CANON_POSITIONS!r} ('' = no Canon layers)")
    _check(isinstance(cfg.canon_kernel, int) and cfg.canon_kernel >= 1, prefix + "canon_kernel",
           cfg.canon_kernel, "an integer >= 1 (positions each Canon layer mixes; 4 in Part 4.1)")
    _check(0.0 <= cfg.dropout < 1.0, prefix + "dropout", cfg.dropout, "a float in [0, 1)")
    _check(cfg.block_size >= 16, prefix + "block_size", cfg.block_size, "an integer >= 16")


def field_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]


__all__ = [
    "ConfigError", "GeneratorConfig", "OP_SAMPLING", "GENERATOR_PRESETS", "generator_preset",
    "validate_generator", "ModelConfig", "CANON_POSITIONS", "validate_model", "field", "field_names",
]



# =============================================================================================
# Training configs (train.py). Defaults are the paper's iGSM-med recipe (spec 13); the YAML files
# in configs/ override them (tiny.yaml is the default CPU run). Probing adds its own configs here.
# =============================================================================================

# Evaluation buckets per generator preset (design 3.2 / spec 6). Grammar of one bucket:
#   "<=N"     op drawn from the training distribution with max_op = N (op ≤ N)
#   "N"       op forced to N (the paper's "op = N" test sets, also beyond max_op)
#   "reaskN"  op forced to N, then the question re-asked (spec 8)
#   ":train" or ":any" after any of these: templates of that split instead of the test split.
# op = 1 has no test-split template in any preset (its few templates all hash below the split
# boundary), so tiny's easiest bucket uses the train templates (new problems, seen templates).
EVAL_BUCKETS: dict[str, list[str]] = {
    "med": ["<=15", "15", "20", "21", "22", "23", "reask20"],
    "hard": ["<=21", "21", "28", "29", "30", "31", "32", "reask28"],
    # op = 1 has no test template (spec 8 hash), so tiny's easiest test bucket "<=2" holds only
    # the op = 2 "N more than X" form; "<=2:train" and "2:train" are fresh problems of seen templates.
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
    # problem's unused letters (spec 7). Same expected gradient without the draw's noise: small
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
    """AdamW (or Muon + AdamW) with linear warm-up then cosine decay (spec 13), stepped every optimizer step."""

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
    """Evaluation by greedy decoding graded with the full-solution verifier (spec 10, 13)."""

    n: int = 4096  # problems per bucket (the paper's 4,096)
    batch_size: int = 256  # prompts decoded together
    max_new_tokens: int = 1024  # generation budget per problem (also capped by model.block_size)
    buckets: Optional[list[str]] = None  # None = EVAL_BUCKETS[data.preset]; grammar above
    examples: int = 2  # decoded examples per bucket written to TensorBoard as text
    # Right after "as", greedy decoding skips letters the solution already defined. Off = the
    # paper's plain greedy. A letter is a uniform draw (spec 7), so greedy's pick there is the
    # model's tiny bias; small models reuse letters long after they reason right (error kind
    # "redefined" in eval.json). The letter is only a name: the grading stays strict.
    fresh_letters: bool = False
    seed: int = 0  # the evaluation sets depend on this, not on the training seed
    final: bool = True  # evaluate when training ends


@dataclass
class TrainConfig:
    """Everything ``python train.py`` reads (design 3.2). ``preset`` picks ``configs/<preset>.yaml``."""

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
    _check(isinstance(spec, str), key, spec, allowed)
    body, _, split = spec.partition(":")
    split = split or "test"
    reask = body.startswith("reask")
    up_to = body.startswith("<=")
    digits = body[5:] if reask else body[2:] if up_to else body
    _check(digits.isdigit() and int(digits) >= 1 and split in ("test", "train", "any"), key, spec, allowed)
    _check(int(digits) <= MAX_OP, key, spec, f"op at most {MAX_OP}")
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
    _check(bool(cfg.name) and all(part not in ("", ".", "..") for part in cfg.name.split("/"))
           and not any(c.isspace() for c in cfg.name), "name", cfg.name,
           "a non-empty run name without spaces ('/' makes sub-folders)")
    _check(cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    validate_model(cfg.model, "model.")
    validate_data(cfg.data, "data.")
    _check(cfg.model.block_size >= cfg.data.context, "model.block_size", cfg.model.block_size,
           f"an integer >= data.context ({cfg.data.context})")
    validate_optim(cfg.optim, "optim.")
    validate_trainer(cfg.trainer, "trainer.")
    d, t = cfg.data, cfg.trainer
    if d.global_batch_size is not None:
        per_pass = d.batch_size * t.devices * t.num_nodes
        acc = t.accumulate_grad_batches
        _check(d.global_batch_size % per_pass == 0 and (acc is None or acc * per_pass == d.global_batch_size),
               "data.global_batch_size", d.global_batch_size,
               f"a multiple of data.batch_size * trainer.devices * trainer.num_nodes = {per_pass}"
               + ("" if acc is None else f" equal to that times trainer.accumulate_grad_batches ({acc});"
                  " set one of the two to null"))
    _check(not (t.precision in ("16-mixed", "16-true") and t.accelerator == "cpu"), "trainer.precision",
           t.precision, "'32-true', 'bf16-mixed' or null on CPU (float16 needs a GPU)")
    validate_eval(cfg.eval, "eval.")
    check_data_lengths(cfg.data, "data.")
    check_buckets_generate(cfg.data, cfg.eval, "eval.buckets")


def validate_data(cfg: DataConfig, prefix: str = "data.") -> None:
    from igsm.tokenizer import TOKENIZER_NAMES  # torch-free; imported here to keep config.py a leaf

    _check(cfg.preset in GENERATOR_PRESETS, prefix + "preset", cfg.preset, f"one of {sorted(GENERATOR_PRESETS)}")
    validate_generator(cfg, prefix)
    _check(cfg.split in ("train", "any"), prefix + "split", cfg.split,
           "'train' or 'any' (the test templates are kept for evaluation)")
    _check(cfg.tokenizer in TOKENIZER_NAMES, prefix + "tokenizer", cfg.tokenizer, f"one of {list(TOKENIZER_NAMES)}")
    _check(cfg.context >= 16, prefix + "context", cfg.context, "an integer >= 16")
    _check(cfg.batch_size >= 1, prefix + "batch_size", cfg.batch_size, "an integer >= 1")
    _check(cfg.global_batch_size is None or cfg.global_batch_size >= 1, prefix + "global_batch_size",
           cfg.global_batch_size, "null or an integer >= 1")
    _check(cfg.loss_on in LOSS_ON, prefix + "loss_on", cfg.loss_on, f"one of {list(LOSS_ON)}")
    _check(cfg.letter_loss in LETTER_LOSS, prefix + "letter_loss", cfg.letter_loss, f"one of {list(LETTER_LOSS)}")
    _check(cfg.retry_loss in RETRY_LOSS, prefix + "retry_loss", cfg.retry_loss, f"one of {list(RETRY_LOSS)}")
    _check(cfg.num_workers >= 0, prefix + "num_workers", cfg.num_workers, "an integer >= 0")
    _check(cfg.prefetch_batches >= 1, prefix + "prefetch_batches", cfg.prefetch_batches, "an integer >= 1")


def validate_optim(cfg: OptimConfig, prefix: str = "optim.") -> None:
    _check(cfg.name in OPTIMIZERS, prefix + "name", cfg.name, f"one of {list(OPTIMIZERS)}")
    if cfg.name == "muon":
        import torch  # only here: config.py stays torch-free for the generator

        _check(hasattr(torch.optim, "Muon"), prefix + "name", cfg.name,
               f"'adamw' with torch {torch.__version__}: torch.optim.Muon needs torch >= {MUON_MIN_TORCH}")
    _check(cfg.lr > 0, prefix + "lr", cfg.lr, "a float > 0")
    _check(cfg.muon_lr > 0, prefix + "muon_lr", cfg.muon_lr, "a float > 0")
    _check(0 <= cfg.muon_momentum < 1, prefix + "muon_momentum", cfg.muon_momentum, "a float in [0, 1)")
    _check(len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas), prefix + "betas", list(cfg.betas),
           "two floats in [0, 1)")
    _check(cfg.eps > 0, prefix + "eps", cfg.eps, "a float > 0")
    _check(cfg.weight_decay >= 0, prefix + "weight_decay", cfg.weight_decay, "a float >= 0")
    _check(cfg.warmup_steps >= 0, prefix + "warmup_steps", cfg.warmup_steps, "an integer >= 0")
    _check(0 <= cfg.min_lr_ratio <= 1, prefix + "min_lr_ratio", cfg.min_lr_ratio, "a float in [0, 1]")
    _check(cfg.grad_clip is None or cfg.grad_clip > 0, prefix + "grad_clip", cfg.grad_clip, "null or a float > 0")
    _check(cfg.on_nonfinite in ("stop", "skip"), prefix + "on_nonfinite", cfg.on_nonfinite, "'stop' or 'skip'")
    _check(cfg.max_nonfinite_skips >= 0, prefix + "max_nonfinite_skips", cfg.max_nonfinite_skips, "an integer >= 0")


def validate_trainer(cfg: TrainerConfig, prefix: str = "trainer.") -> None:
    _check(cfg.max_steps >= 1, prefix + "max_steps", cfg.max_steps, "an integer >= 1")
    _check(cfg.accelerator in ACCELERATORS, prefix + "accelerator", cfg.accelerator, f"one of {list(ACCELERATORS)}")
    _check(cfg.devices >= 1, prefix + "devices", cfg.devices, "an integer >= 1 (devices per node)")
    _check(cfg.num_nodes >= 1, prefix + "num_nodes", cfg.num_nodes, "an integer >= 1")
    _check(cfg.strategy in STRATEGIES, prefix + "strategy", cfg.strategy, f"one of {list(STRATEGIES)}")
    _check(cfg.precision is None or cfg.precision in PRECISIONS, prefix + "precision", cfg.precision,
           f"null (auto) or one of {list(PRECISIONS)}")
    _check(cfg.accumulate_grad_batches is None or cfg.accumulate_grad_batches >= 1,
           prefix + "accumulate_grad_batches", cfg.accumulate_grad_batches, "null or an integer >= 1")
    _check(cfg.log_every_n_steps >= 1, prefix + "log_every_n_steps", cfg.log_every_n_steps, "an integer >= 1")
    _check(cfg.eval_every is None or cfg.eval_every >= 1, prefix + "eval_every", cfg.eval_every,
           "null (final evaluation only) or an integer >= 1")
    _check(cfg.checkpoint_every >= 1, prefix + "checkpoint_every", cfg.checkpoint_every, "an integer >= 1")
    _check(cfg.cpu_threads is None or cfg.cpu_threads >= 1, prefix + "cpu_threads", cfg.cpu_threads,
           "null (torch's default) or an integer >= 1")


def validate_eval(cfg: EvalConfig, prefix: str = "eval.") -> None:
    _check(cfg.n >= 1, prefix + "n", cfg.n, "an integer >= 1 (problems per bucket)")
    _check(cfg.batch_size >= 1, prefix + "batch_size", cfg.batch_size, "an integer >= 1")
    _check(cfg.max_new_tokens >= 1, prefix + "max_new_tokens", cfg.max_new_tokens, "an integer >= 1")
    _check(cfg.examples >= 0, prefix + "examples", cfg.examples, "an integer >= 0")
    _check(cfg.seed >= 0, prefix + "seed", cfg.seed, "an integer >= 0")
    _check(cfg.buckets is not None and len(cfg.buckets) >= 1, prefix + "buckets", cfg.buckets,
           f"a non-empty list (null = the data preset's, known for {sorted(EVAL_BUCKETS)})")
    labels = [parse_bucket(b, prefix + "buckets").label for b in cfg.buckets]
    _check(len(set(labels)) == len(labels), prefix + "buckets", cfg.buckets, "no bucket twice")


LENGTH_SAMPLE = 256  # training problems sampled to check data.context against problem lengths
MAX_DROPPED = 0.05  # at most this share of training problems may be longer than the window


def check_data_lengths(cfg: DataConfig, prefix: str = "data.") -> None:
    """Reject a packing window that would drop more than 5% of the training problems.

    The paper's own windows are shorter than the longest problems (med: 768 vs 869 GPT-2 tokens),
    so "context >= longest problem" would be wrong; what matters is how many problems are lost.
    Samples LENGTH_SAMPLE problems with a fixed seed (~0.3 s).
    """
    from igsm.generator import GenerationError, generate_problem, problem_rng

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
    _check(dropped <= MAX_DROPPED, prefix + "context", cfg.context,
           f"an integer >= {needed}: {dropped:.0%} of sampled training problems are longer "
           f"(longest {lengths[-1]} {cfg.tokenizer} tokens) and would be dropped")


def check_buckets_generate(data: DataConfig, ev: EvalConfig, key: str = "eval.buckets") -> None:
    """Generate one problem per forced-op bucket, so an impossible op fails now, not mid-run."""
    from igsm.generator import GenerationError, generate_problem, problem_rng

    for spec in ev.buckets:
        b = parse_bucket(spec, key)
        if b.up_to:
            continue  # ops without templates in the split are skipped when the set is drawn
        try:
            generate_problem(bucket_generator_config(data, b), problem_rng(0, "bucket-check", spec))
        except GenerationError as e:
            raise ConfigError(f"{key}: {spec!r} is not allowed with data.preset={data.preset!r}: {e}") from None


def generator_config(cfg: DataConfig) -> GeneratorConfig:
    """The GeneratorConfig part of a DataConfig (the training stream's generator)."""
    return GeneratorConfig(**{f.name: getattr(cfg, f.name) for f in fields(GeneratorConfig)})


def build_data_tokenizer(cfg: DataConfig):
    """The tokenizer of a data config. The word tokenizer's vocabulary is built from the world
    subset the config draws names from, so small worlds give small embedding tables."""
    from igsm.generator import world_for
    from igsm.tokenizer import build_tokenizer

    world = world_for(generator_config(cfg)) if cfg.tokenizer == "word" else None
    return build_tokenizer(cfg.tokenizer, world=world)


def bucket_generator_config(cfg: DataConfig, bucket: BucketSpec) -> GeneratorConfig:
    """The generator of one evaluation bucket: the training data's world and sizes, the bucket's
    op rule and split. For "<=N" the op is drawn by the caller (see igsm.data), always from the
    paper's min-of-two mix whatever data.op_sampling says, so runs that differ in their training
    op mix are graded on the same problems."""
    base = generator_config(cfg)
    if bucket.up_to:
        return replace(base, max_op=bucket.op, op=None, reask=False, split=bucket.split, op_sampling="min2")
    return replace(base, op=bucket.op, reask=bucket.reask, split=bucket.split)


__all__ += [
    "EVAL_BUCKETS", "DataConfig", "OptimConfig", "OPTIMIZERS", "TrainerConfig", "EvalConfig", "TrainConfig",
    "BucketSpec", "parse_bucket", "accumulation", "validate_train", "validate_data", "validate_optim",
    "validate_trainer", "validate_eval", "generator_config", "bucket_generator_config", "build_data_tokenizer",
]


# =============================================================================================
# Probing configs (probe.py, spec 11-12). The dataclass defaults are the paper's probe recipe
# (AdamW lr 0.002, no warm-up, linear decay to 0, weight decay 0.01, batch 256, 100k steps);
# configs/probe_tiny.yaml is the default CPU run, probe_med.yaml / probe_hard.yaml the paper's.
# =============================================================================================

PROBE_TASKS = ("nece", "dep", "known", "value", "can_next", "nece_next")  # = probing.labels.TASKS
PROBE_EXTRA_TASKS = ("regret",)  # Part 2.2's regret probe (probing.labels): on request, not by default
PROBE_LAYERS = ("last", "all")
PROBE_CONTROLS = ("none", "random_init", "both")
PROBE_TEST_SPLITS = ("test", "train")


@dataclass
class ProbeOptions:
    """The V-probe: tasks, heads, controls, and its optimiser (linear decay to 0 over max_steps)."""

    tasks: list[str] = field(default_factory=lambda: list(PROBE_TASKS))
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
    analysis: bool = False  # run the error analysis (spec 12) after probing
    # Controls that bound what a probe result means (docs/probing-controls.md)
    test_split: str = "test"  # test pairs from "test"-template problems, or fresh "train"-template problems
    split_by_solved: bool = False  # also split test accuracy by whether the backbone solves the problem
    positive_control: bool = False  # also probe, per task, a backbone copy fine-tuned to hold the label
    positive_steps: int = 300  # fine-tuning steps of each positive-control copy (batch_size pairs each)
    positive_lr: float = 1.0e-3  # its AdamW learning rate (linear decay to 0, no weight decay)
    shuffle_labels: bool = False  # negative control: every label taken from a random pair of another problem


@dataclass
class AnalysisConfig:
    """Error analysis (spec 12): greedy generations graded by the verifier vs probe predictions."""

    n: int = 1024  # problems per analysed set (reask set and in-distribution test set)
    reask_op: Optional[int] = None  # op of the reask problems; None = the training data's max_op
    batch_size: int = 256  # prompts decoded together
    max_new_tokens: int = 1024


@dataclass
class ProbeConfig:
    """Everything ``python probe.py`` reads (design 3.3). ``preset`` picks ``configs/<preset>.yaml``."""

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
    _check(cfg.name is None or (bool(cfg.name) and not any(c.isspace() for c in cfg.name)
                                and all(part not in ("", ".", "..") for part in cfg.name.split("/"))),
           "name", cfg.name, "null or a non-empty run name without spaces")
    _check(cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    _check(cfg.ckpt_path is None or bool(cfg.ckpt_path), "ckpt_path", cfg.ckpt_path,
           "null, 'last' or a probe run's .ckpt file")
    p = cfg.probe
    allowed = PROBE_TASKS + PROBE_EXTRA_TASKS
    _check(len(p.tasks) >= 1 and all(t in allowed for t in p.tasks) and len(set(p.tasks)) == len(p.tasks),
           "probe.tasks", p.tasks, f"a non-empty list of distinct tasks from {list(allowed)}")
    _check(p.layers in PROBE_LAYERS, "probe.layers", p.layers, f"one of {list(PROBE_LAYERS)}")
    _check(p.control in PROBE_CONTROLS, "probe.control", p.control, f"one of {list(PROBE_CONTROLS)}")
    _check(p.rank >= 1, "probe.rank", p.rank, "an integer >= 1")
    _check(p.batch_size >= 1, "probe.batch_size", p.batch_size, "an integer >= 1")
    _check(p.draws >= 1, "probe.draws", p.draws, "an integer >= 1")
    _check(p.lr > 0, "probe.lr", p.lr, "a float > 0")
    _check(p.weight_decay >= 0, "probe.weight_decay", p.weight_decay, "a float >= 0")
    _check(p.warmup_steps >= 0, "probe.warmup_steps", p.warmup_steps, "an integer >= 0")
    _check(len(p.betas) == 2 and all(0 <= b < 1 for b in p.betas), "probe.betas", list(p.betas), "two floats in [0, 1)")
    _check(p.v_init_std > 0, "probe.v_init_std", p.v_init_std, "a float > 0")
    _check(p.train_problems >= 0, "probe.train_problems", p.train_problems, "an integer >= 0 (0 = from max_steps)")
    _check(p.test_problems >= 1, "probe.test_problems", p.test_problems, "an integer >= 1")
    _check(p.num_workers >= 0, "probe.num_workers", p.num_workers, "an integer >= 0")
    _check(p.length_chunks is None or p.length_chunks >= 1, "probe.length_chunks", p.length_chunks,
           "null (auto: 4 on GPU, 1 on CPU) or an integer >= 1")
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    _check(p.batch_size % world == 0, "probe.batch_size", p.batch_size,
           f"a multiple of trainer.devices * trainer.num_nodes = {world} (the batch is global, split among devices)")
    _check(p.test_split in PROBE_TEST_SPLITS, "probe.test_split", p.test_split, f"one of {list(PROBE_TEST_SPLITS)}")
    _check(p.positive_steps >= 1, "probe.positive_steps", p.positive_steps, "an integer >= 1")
    _check(p.positive_lr > 0, "probe.positive_lr", p.positive_lr, "a float > 0")
    a = cfg.analysis
    _check(a.n >= 1, "analysis.n", a.n, "an integer >= 1")
    _check(a.reask_op is None or 1 <= a.reask_op <= MAX_OP, "analysis.reask_op", a.reask_op,
           f"null or an integer in 1..{MAX_OP}")
    _check(a.batch_size >= 1, "analysis.batch_size", a.batch_size, "an integer >= 1")
    _check(a.max_new_tokens >= 1, "analysis.max_new_tokens", a.max_new_tokens, "an integer >= 1")
    validate_trainer(cfg.trainer, "trainer.")
    _check(not (cfg.trainer.precision in ("16-mixed", "16-true") and cfg.trainer.accelerator == "cpu"),
           "trainer.precision", cfg.trainer.precision, "'32-true', 'bf16-mixed' or null on CPU")


__all__ += ["PROBE_TASKS", "PROBE_EXTRA_TASKS", "PROBE_LAYERS", "PROBE_CONTROLS", "PROBE_TEST_SPLITS", "ProbeOptions",
            "AnalysisConfig", "ProbeConfig", "validate_probe"]
