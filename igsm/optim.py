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
    iteration, ``_zeropower_via_newtonschulz``), computed in ``dtype`` instead of bf16."""
    a, b, c = coefficients
    tall = g.size(0) > g.size(1)
    x = g.to(dtype)  # [m, n]
    x = x.T if tall else x  # [short, long]
    x = x / x.norm().clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.T  # [short, short]
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


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
    same update otherwise, :meth:`_muon_step_float32`). For CPUs that emulate bf16: there torch's
    bf16 iteration took ~9x the time of float32 (a tiny 2-layer model: 1.9 s per Muon step
    against a 1.6 s forward and backward).
    """

    def __init__(self, groups: list[dict], adamw: Optional[dict] = None, muon: Optional[dict] = None,
                 ns_float32: bool = False) -> None:
        self.ns_float32 = ns_float32
        adamw_groups = [dict(g) for g in groups if g.get("name") != MUON_GROUP]
        muon_groups = [dict(g) for g in groups if g.get("name") == MUON_GROUP]
        self._adamw = torch.optim.AdamW(adamw_groups, **(adamw or {})) if adamw_groups else None
        self._muon = torch.optim.Muon(muon_groups, **(muon or {})) if muon_groups else None
        # The inner optimizers filled in their defaults; the base class adopts the same dicts.
        inner = [o for o in (self._adamw, self._muon) if o is not None]
        super().__init__([g for o in inner for g in o.param_groups], defaults={})
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
            self._muon_step_float32() if self.ns_float32 else self._muon.step()
        return loss

    def _muon_step_float32(self) -> None:
        """torch.optim.Muon's step (single-tensor path: Nesterov momentum as an EMA, decoupled
        weight decay, shape-scaled lr) with the orthogonalisation in float32."""
        for group in self._muon.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_steps"], group["ns_coefficients"], group["eps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape))

    def __setstate__(self, state: dict) -> None:
        # load_state_dict ends here with new group dicts and a new state dict; so does unpickling
        super().__setstate__(state)
        if "_adamw" in self.__dict__:
            self._link()

    def __getstate__(self) -> dict:
        return dict(super().__getstate__(), _adamw=self._adamw, _muon=self._muon)


def build_optimizer(model: nn.Module, groups: list[dict], o, fused: Optional[bool],
                    ns_float32: bool = False) -> torch.optim.Optimizer:
    """The optimizer of ``o`` (an OptimConfig) over ``groups`` (igsm.lit.param_groups of ``model``);
    ``ns_float32``: see :class:`MuonAdamW`."""
    adamw = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, **adamw)
    return MuonAdamW(split_muon_group(groups, model, o.muon_lr, o.muon_momentum), adamw=adamw,
                     muon=dict(lr=o.muon_lr, momentum=o.muon_momentum), ns_float32=ns_float32)


__all__ = ["MuonAdamW", "build_optimizer", "muon_matrices", "split_muon_group", "newton_schulz", "adjusted_lr",
           "MUON_GROUP"]
