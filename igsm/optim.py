"""The optimizer of ``optim.name``: AdamW on every parameter, or Muon on the hidden matrices and
AdamW on the rest, as ONE ``torch.optim.Optimizer`` (:class:`MuonAdamW`).

One object keeps everything Lightning does for one optimizer working unchanged: automatic
optimization, gradient accumulation and clipping, the mixed-precision plugins, one LambdaLR
schedule that scales every group's lr by the same factor, LearningRateMonitor, and checkpoints
(``state_dict`` / ``load_state_dict`` are the base class's, over all groups: resume is exact).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

MUON_GROUP = "muon"  # the "name" of the param group Muon steps
# nn.Linear layers whose weight stacks several projections along its rows (the model's fused q, k,
# v): Muon orthogonalises each row block on its own, as modded-nanogpt and Moonlight do.
FUSED_ROW_BLOCKS = {"c_attn": 3}


def muon_matrices(model: nn.Module) -> set[int]:
    """ids of the parameters Muon steps: the 2-D weight of every ``nn.Linear`` that is neither the
    output head nor tied to an embedding, nor inside a Canon layer (``canon_*``, depthwise
    convolutions: AdamW whatever their shape)."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    ids = set()
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear) or m.weight.ndim != 2 or not m.weight.requires_grad:
            continue
        parts = name.split(".")
        if id(m.weight) in embedding_ids or "lm_head" in parts or any(p.startswith("canon") for p in parts):
            continue
        ids.add(id(m.weight))
    return ids


def muon_row_blocks(model: nn.Module) -> dict[int, int]:
    """id of each Muon matrix -> how many row blocks Muon orthogonalises it as (1 = the whole
    matrix; ``FUSED_ROW_BLOCKS`` names the fused layers)."""
    blocks = {id(m.weight): FUSED_ROW_BLOCKS.get(name.rsplit(".", 1)[-1], 1)
              for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    return {i: blocks[i] for i in muon_matrices(model)}


def split_muon_group(groups: list[dict], model: nn.Module, lr: float, momentum: float) -> list[dict]:
    """AdamW groups (igsm.lit.param_groups) with the Muon matrices moved out of them into one last
    group named "muon" (its weight decay: that of the group they came from, "decay"). Empty AdamW
    groups are dropped."""
    matrices = muon_matrices(model)
    muon, weight_decay, out = [], 0.0, []
    for g in groups:
        moved = [p for p in g["params"] if id(p) in matrices]
        if moved:
            muon += moved
            weight_decay = g["weight_decay"]
        rest = [p for p in g["params"] if id(p) not in matrices]
        if rest:
            out.append(dict(g, params=rest))
    return out + [{"params": muon, "weight_decay": weight_decay, "name": MUON_GROUP, "lr": lr,
                   "momentum": momentum}]


def newton_schulz(g: torch.Tensor, steps: int = 5, coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
                  eps: float = 1e-7, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torch.optim.Muon's orthogonalisation of a 2-D update (its quintic Newton-Schulz
    iteration, ``_zeropower_via_newtonschulz``), computed in ``dtype`` instead of bf16.

    ``g`` [m, n], or [b, m, n]: a batch of matrices of one shape, each orthogonalised on its own
    (one batched matmul per product instead of b; the 2-D case is torch's iteration bit for bit)."""
    a, b, c = coefficients
    tall = g.size(-2) > g.size(-1)
    x = g.to(dtype)  # [(b,) m, n]
    x = x.mT if tall else x  # [(b,) short, long]
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= 1, per matrix
    mm, add_mm = (torch.mm, torch.addmm) if x.dim() == 2 else (torch.bmm, torch.baddbmm)
    for _ in range(steps):
        gram = mm(x, x.mT)  # [(b,) short, short]
        x = add_mm(x, add_mm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def orthogonalise(updates: list[torch.Tensor], steps: int = 5,
                  coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315), eps: float = 1e-7,
                  dtype: torch.dtype = torch.float32, out_dtype: Optional[torch.dtype] = None,
                  batched: Optional[bool] = None) -> list[torch.Tensor]:
    """:func:`newton_schulz` of each 2-D update, those of one shape (tall ones turned wide, so
    [4d, d] and [d, 4d] share a batch) stacked into one batched iteration: a handful of batches
    per model instead of one iteration per matrix. Returns the results in ``updates``' order, in
    ``out_dtype`` (default ``dtype``).

    ``batched``: None = batch except on a CPU. A GPU step of small matrices is bound by kernel
    launches (~15 per matrix unbatched); a CPU's is bound by the products themselves, where the
    batch's large temporaries took 0.8x the speed of one matrix at a time (benchmarks/muon.py)."""
    out_dtype = out_dtype or dtype
    if not updates:
        return []
    if not (batched if batched is not None else updates[0].device.type != "cpu"):
        return [newton_schulz(u, steps, coefficients, eps, dtype).to(out_dtype) for u in updates]
    tall = [u.size(0) > u.size(1) for u in updates]
    wide = [u.mT if t else u for u, t in zip(updates, tall)]  # [short, long] each
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, w in enumerate(wide):
        buckets.setdefault(tuple(w.shape), []).append(i)
    out: list[torch.Tensor] = [torch.empty(0)] * len(updates)
    for members in buckets.values():
        batch = torch.stack([wide[i] for i in members])  # [n, short, long]
        orth = newton_schulz(batch, steps, coefficients, eps, dtype).to(out_dtype)  # [n, short, long]
        for o, i in zip(orth.unbind(0), members):
            out[i] = o.mT if tall[i] else o
    return out


def adjusted_lr(lr: float, adjust_lr_fn: Optional[str], shape: torch.Size) -> float:
    """torch.optim.Muon's shape scaling of the lr: "original" (None) x sqrt(max(1, A / B)),
    "match_rms_adamw" x 0.2 sqrt(max(A, B))."""
    A, B = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * max(1.0, A / B) ** 0.5
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * max(A, B) ** 0.5
    return lr


class MuonAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` on the groups named "muon", ``torch.optim.AdamW`` on the others, as one
    optimizer. ``param_groups`` and ``state`` are this object's; the two inner optimizers step
    views of them (the same group dicts, the same state dict), re-linked after ``load_state_dict``.
    AdamW groups come first, in the order given.

    ``adamw`` / ``muon``: keyword arguments of the two constructors (their defaults, e.g. betas,
    or momentum); a group's own keys (lr, weight_decay) win as usual.

    ``ns_float32``: run Muon's Newton-Schulz iterations in float32 instead of torch's bf16 (the
    same update otherwise, :meth:`_muon_step`). For CPUs that emulate bf16: there torch's
    bf16 iteration took ~9x the time of float32 (a tiny 2-layer model: 1.9 s per Muon step
    against a 1.6 s forward and backward).

    ``row_blocks``: id of a Muon matrix -> the number of row blocks it stacks (the fused q, k, v:
    3, :func:`muon_row_blocks`); each block is orthogonalised as a matrix of its own. Not saved
    in the state dict, which stays torch's: checkpoints load either way.

    ``batched``: orthogonalise the matrices of one shape as one batch (None: except on a CPU,
    :func:`orthogonalise`).
    """

    def __init__(self, groups: list[dict], adamw: Optional[dict] = None, muon: Optional[dict] = None,
                 ns_float32: bool = False, row_blocks: Optional[dict[int, int]] = None,
                 batched: Optional[bool] = None) -> None:
        self.ns_float32 = ns_float32
        self.batched = batched
        adamw_groups = [dict(g) for g in groups if g.get("name") != MUON_GROUP]
        muon_groups = [dict(g) for g in groups if g.get("name") == MUON_GROUP]
        self._adamw = torch.optim.AdamW(adamw_groups, **(adamw or {})) if adamw_groups else None
        self._muon = torch.optim.Muon(muon_groups, **(muon or {})) if muon_groups else None
        # The inner optimizers filled in their defaults; the base class adopts the same dicts.
        inner = [o for o in (self._adamw, self._muon) if o is not None]
        super().__init__([g for o in inner for g in o.param_groups], defaults={})
        # Per Muon group, per parameter (by position: load_state_dict and pickling keep the order,
        # and the state dict stays torch's), the row blocks it is orthogonalised as.
        muon_groups = self._muon.param_groups if self._muon is not None else []
        self._row_blocks = [[(row_blocks or {}).get(id(p), 1) for p in g["params"]] for g in muon_groups]
        for g, blocks in zip(muon_groups, self._row_blocks):
            for p, n in zip(g["params"], blocks):
                if n < 1 or p.shape[0] % n:
                    raise ValueError(f"row_blocks={n} for a Muon matrix of shape {tuple(p.shape)}: "
                                     "allowed: a positive divisor of its row count")
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this object's groups and state (after init and load)."""
        if self._adamw is not None:
            self._adamw.param_groups = [g for g in self.param_groups if g.get("name") != MUON_GROUP]
            self._adamw.state = self.state
        if self._muon is not None:
            self._muon.param_groups = [g for g in self.param_groups if g.get("name") == MUON_GROUP]
            self._muon.state = self.state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Evaluate the closure once (Lightning's forward and backward), then step both."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._adamw is not None:
            self._adamw.step()
        if self._muon is not None:
            self._muon_step()
        return loss

    def _muon_step(self) -> None:
        """torch.optim.Muon's step (Nesterov momentum as an EMA, decoupled weight decay,
        shape-scaled lr), with two changes: every matrix of a group is orthogonalised in one
        :func:`orthogonalise` call (batched by shape off CPUs), and a fused matrix (``row_blocks`` n > 1)
        as n row blocks, each orthogonalised and lr-scaled as a matrix of its own. The
        elementwise parts run as foreach ops over the group. Newton-Schulz in bf16 as torch's
        (float32 with ``ns_float32``)."""
        dtype = torch.float32 if self.ns_float32 else torch.bfloat16
        for group, row_blocks in zip(self._muon.param_groups, self._row_blocks):
            lr, momentum = float(group["lr"]), group["momentum"]
            params, blocks = [], []
            for p, n in zip(group["params"], row_blocks):
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                params.append(p)
                blocks.append(n)
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
            pieces = [piece for u, n in zip(updates, blocks) for piece in u.unflatten(0, (n, -1)).unbind(0)]
            orth = iter(orthogonalise(pieces, group["ns_steps"], group["ns_coefficients"], group["eps"], dtype,
                                      out_dtype=params[0].dtype, batched=self.batched))
            by_lr: dict[float, tuple[list, list]] = {}  # the shape-scaled lr -> (params, updates)
            for p, n in zip(params, blocks):
                parts = [next(orth) for _ in range(n)]  # [rows / n, cols] each
                scaled = adjusted_lr(lr, group["adjust_lr_fn"], parts[0].shape)
                ps, us = by_lr.setdefault(scaled, ([], []))
                ps.append(p)
                us.append((parts[0] if n == 1 else torch.cat(parts)).to(p.dtype))
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            for scaled, (ps, us) in by_lr.items():
                torch._foreach_add_(ps, us, alpha=-scaled)

    def __setstate__(self, state: dict) -> None:
        # load_state_dict ends here with new group dicts and a new state dict; so does unpickling
        super().__setstate__(state)
        if "_adamw" in self.__dict__:
            self._link()

    def __getstate__(self) -> dict:
        return dict(super().__getstate__(), _adamw=self._adamw, _muon=self._muon, _row_blocks=self._row_blocks,
                    ns_float32=self.ns_float32, batched=self.batched)


def build_optimizer(model: nn.Module, groups: list[dict], o, fused: Optional[bool],
                    ns_float32: bool = False) -> torch.optim.Optimizer:
    """The optimizer of ``o`` (an OptimConfig) over ``groups`` (igsm.lit.param_groups of ``model``);
    ``ns_float32``: see :class:`MuonAdamW`."""
    adamw = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, **adamw)
    return MuonAdamW(split_muon_group(groups, model, o.muon_lr, o.muon_momentum), adamw=adamw,
                     muon=dict(lr=o.muon_lr, momentum=o.muon_momentum), ns_float32=ns_float32,
                     row_blocks=muon_row_blocks(model))


__all__ = ["MuonAdamW", "build_optimizer", "muon_matrices", "muon_row_blocks", "split_muon_group", "newton_schulz",
           "orthogonalise", "adjusted_lr", "MUON_GROUP", "FUSED_ROW_BLOCKS"]
