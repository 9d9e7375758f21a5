"""GPT-2 with rotary position embeddings (spec 13), as a plain ``nn.Module``.

Read top to bottom: RoPE functions, attention, MLP, block, the model, then the KV cache used for
batched decoding. ``GPT2-l-h`` means ``ModelConfig(n_layer=l, n_head=h)`` (hidden size 64*h).

Beyond a standard GPT-2, the forward pass serves the V-probe (spec 11):
- ``output_hidden_states=True`` returns the residual stream after every block;
- ``embed_delta=(U, V)`` adds a rank-r update ``U[idx] @ V`` to the input embedding only;
- ``compute_logits=False`` skips the language-model head when only hidden states are needed.

Decoding uses :meth:`GPT.forward_cached` with a preallocated :class:`KVCache`. Prompts are
left-padded onto one shared position grid; padded keys are masked out of attention, and since
RoPE scores depend only on relative positions, a prompt shifted right by its padding produces
exactly the same scores as the unpadded prompt.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from igsm.config import ModelConfig, validate_model

VOCAB_MULTIPLE = 64  # pad the embedding table so the lm-head matmul has tensor-core friendly shapes
CACHE_MULTIPLE = 64  # KV-cache length and attended key span are rounded up to this (see KVCache)


# ---------------------------------------------------------------------------------------------
# Rotary position embeddings: pure functions, tested on their own.
# ---------------------------------------------------------------------------------------------

def build_rope_cache(
    seq_len: int, head_dim: int, base: float = 10000.0, device: Optional[torch.device] = None
) -> tuple[Tensor, Tensor]:
    """cos and sin tables, each [seq_len, head_dim // 2], for positions 0..seq_len-1.

    Frequency i rotates the pair (x[i], x[i + head_dim/2]) by angle pos * base^(-2i/head_dim)
    (the GPT-NeoX / litgpt "rotate half" layout). Built in float32 for accuracy.
    """
    assert head_dim % 2 == 0, "RoPE rotates pairs of channels: head_dim must be even"
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)  # [hd/2]
    pos = torch.arange(seq_len, device=device, dtype=torch.float32)  # [T]
    angles = torch.outer(pos, inv_freq)  # [T, hd/2]
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [..., T, head_dim] by the angles of its positions; cos, sin are [T, head_dim // 2].

    Because every pair is rotated by an angle linear in the position, the dot product of a
    rotated query at m with a rotated key at n depends only on m - n.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]  # [..., T, hd/2] each
    if cos.dtype != x.dtype:  # the decoding cache holds tables already in its dtype: no cast per step
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # [..., T, hd]


# ---------------------------------------------------------------------------------------------
# The transformer.
# ---------------------------------------------------------------------------------------------

class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE on q and k, computed by SDPA."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.d_model // cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)  # q, k, v together
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)  # residual projection
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv: Optional["LayerCache"] = None,
        pos: int = 0,
        attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """x [B, T, d] -> [B, T, d]. cos/sin cover the T positions of x.

        Plain path (kv None): causal attention over x alone. Cached path: k, v of x are written
        into the layer's cache at pos..pos+T-1 and the queries attend to the cached keys allowed
        by attn_mask [B, 1, T, S] (True = attend), where S is the attended span of the cache
        (``kv.k_span``, ``kv.v_span``: views of its first S positions).
        """
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, T, hd]
        q, k = apply_rope(qkv[:2], cos, sin).unbind(0)  # q and k rotated in one go: [B, H, T, hd] each
        v = qkv[2]  # [B, H, T, hd]

        if kv is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )  # [B, H, T, hd]
        else:
            assert attn_mask is not None, "the cached path needs an attention mask"
            kv.k[:, :, pos : pos + T] = k  # cache [B, H, max_len, hd]
            kv.v[:, :, pos : pos + T] = v
            k_all, v_all = kv.k_span, kv.v_span  # [B, H, S, hd]
            if k_all.dtype != q.dtype:
                k_all, v_all = k_all.to(q.dtype), v_all.to(q.dtype)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=attn_mask)  # [B, H, T, hd]

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # [B, T, d]
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: d -> 4d -> GELU -> d."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)  # residual projection
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # [B, T, d]


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv: Optional["LayerCache"] = None,
        pos: int = 0,
        attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        x = x + self.attn(self.ln_1(x), cos, sin, kv, pos, attn_mask)  # [B, T, d]
        x = x + self.mlp(self.ln_2(x))  # [B, T, d]
        return x


class GPTOutput(NamedTuple):
    """What :meth:`GPT.forward` returns; fields the caller did not ask for are None."""

    logits: Optional[Tensor]  # [B, T, padded_vocab]
    loss: Optional[Tensor]  # scalar: mean cross-entropy over targets != -100
    hidden_states: Optional[tuple[Tensor, ...]]  # n_layer + 1 tensors [B, T, d]


class GPT(nn.Module):
    """GPT-2 (pre-LN, GELU, tied embeddings) with RoPE instead of learned positions."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        validate_model(cfg)
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.padded_vocab = math.ceil(vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        d = cfg.d_model

        self.wte = nn.Embedding(self.padded_vocab, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d, bias=cfg.bias)
        self.lm_head = nn.Linear(d, self.padded_vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one matrix embeds and un-embeds

        # Derived from the config, so never saved: checkpoints hold learned weights only.
        cos, sin = build_rope_cache(cfg.block_size, d // cfg.n_head, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # [block_size, hd/2]
        self.register_buffer("rope_sin", sin, persistent=False)  # [block_size, hd/2]

        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """GPT-2 initialisation of every tensor:

        - ``wte.weight`` (also the output head): normal, std 0.02 (pad rows included).
        - ``c_attn.weight``, ``mlp.c_fc.weight``: normal, std 0.02.
        - ``attn.c_proj.weight``, ``mlp.c_proj.weight`` (the two writes into the residual stream
          per block): normal, std 0.02 / sqrt(2 * n_layer), so the stream's variance does not
          grow with depth.
        - every Linear bias: zero.
        - every LayerNorm: weight one, bias zero.
        - ``rope_cos``, ``rope_sin``: computed, not learned.
        """
        std = 0.02
        resid_std = std / math.sqrt(2 * self.cfg.n_layer)
        nn.init.normal_(self.wte.weight, mean=0.0, std=std)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and module is not self.lm_head:
                nn.init.normal_(module.weight, mean=0.0, std=resid_std if name.endswith("c_proj") else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # -- embedding and the plain forward -------------------------------------------------------

    def embed(self, idx: Tensor, embed_delta: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        """Input embedding [B, T, d]: wte(idx), plus U[idx] @ V when a V-probe delta is given."""
        x = self.wte(idx)  # [B, T, d]
        if embed_delta is not None:
            U, V = embed_delta  # [padded_vocab, r], [r, d]
            x = x + F.embedding(idx, U) @ V  # [B, T, r] @ [r, d] -> [B, T, d]
        return x

    def forward(
        self,
        idx: Tensor,
        targets: Optional[Tensor] = None,
        *,
        embed_delta: Optional[tuple[Tensor, Tensor]] = None,
        output_hidden_states: bool = False,
        compute_logits: bool = True,
    ) -> GPTOutput:
        """idx [B, T] token ids -> logits [B, T, padded_vocab], loss, hidden states.

        targets [B, T]: next-token ids, -100 where no loss is wanted (mean over the rest).
        hidden_states[0] is the embedding output (the input of block 1), hidden_states[l] the
        residual stream after block l; the last one is before the final LayerNorm.
        """
        T = idx.shape[1]
        if T > self.cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds model.block_size={self.cfg.block_size}")
        if targets is not None and not compute_logits:
            raise ValueError("a loss needs logits: pass compute_logits=True with targets")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # [T, hd/2]

        x = self.drop(self.embed(idx, embed_delta))  # [B, T, d]
        hidden = [x] if output_hidden_states else None
        for block in self.blocks:
            x = block(x, cos, sin)  # [B, T, d]
            if hidden is not None:
                hidden.append(x)

        logits = loss = None
        if compute_logits:
            logits = self.lm_head(self.ln_f(x))  # [B, T, padded_vocab]
            if targets is not None:
                loss = F.cross_entropy(
                    logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100
                )
        return GPTOutput(logits, loss, tuple(hidden) if hidden is not None else None)

    # -- decoding with a KV cache ---------------------------------------------------------------

    def new_kv_cache(
        self, batch: int, max_len: int, *, device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> "KVCache":
        """An empty cache for `batch` rows of up to `max_len` positions (prompt + generation)."""
        if max_len > self.cfg.block_size:
            raise ValueError(f"max_len={max_len} exceeds model.block_size={self.cfg.block_size}")
        p = self.wte.weight
        cache = KVCache(
            n_layer=self.cfg.n_layer, batch=batch, n_head=self.cfg.n_head,
            max_len=min(_round_up(max_len, CACHE_MULTIPLE), self.cfg.block_size),
            head_dim=self.cfg.d_model // self.cfg.n_head,
            device=device or p.device, dtype=dtype or p.dtype,
        )
        # RoPE tables cast once per cache (not per step and layer) to the dtype q and k have.
        cache.rope_cos = self.rope_cos[: cache.max_len].to(cache.k.device, cache.k.dtype)  # [max_len, hd/2]
        cache.rope_sin = self.rope_sin[: cache.max_len].to(cache.k.device, cache.k.dtype)  # [max_len, hd/2]
        return cache

    def forward_cached(self, idx: Tensor, cache: "KVCache", valid: Optional[Tensor] = None) -> Tensor:
        """Append idx [B, T] at positions cache.pos..cache.pos+T-1; return the logits of the last
        position [B, padded_vocab] in float32 (all decoding needs, and far less memory than
        [B, T, V]; float32 so that near-equal logits do not tie in bf16, where argmax would pick
        the lowest id, e.g. reuse the first letters).

        valid [B, T] bool marks real tokens (False = left padding); None = all real.
        See :func:`cached_attention_mask` for who attends to what. A one-token step of a real
        token attends through a view of the cache's additive mask row (no mask built per step,
        see KVCache.span).
        """
        T = idx.shape[1]
        pos = cache.pos
        if pos + T > cache.max_len:
            raise ValueError(f"KV cache full: {pos} + {T} positions > max_len={cache.max_len}")
        cache.valid[:, pos : pos + T] = True if valid is None else valid
        step = T == 1 and valid is None  # a real query at pos: it attends to exactly the valid keys
        if step:
            cache.step_bias[:, pos] = 0.0  # the additive form of valid: 0 = attend
        # Attend over a key span rounded up to CACHE_MULTIPLE: fewer distinct shapes, aligned masks;
        # keys past pos + T are excluded by causality.
        layers = cache.span(min(_round_up(pos + T, CACHE_MULTIPLE), cache.max_len))
        if step:
            attn_mask = cache.step_mask  # [B, 1, 1, S]
        else:
            attn_mask = cached_attention_mask(cache.valid[:, : cache.span_len], pos, T)  # [B, 1, T, S]
            cache.step_bias[:, pos : pos + T].masked_fill_(cache.valid[:, pos : pos + T], 0.0)

        cos, sin = cache.rope_cos[pos : pos + T], cache.rope_sin[pos : pos + T]  # [T, hd/2]
        x = self.wte(idx)  # [B, T, d]
        for block, kv in zip(self.blocks, layers):
            x = block(x, cos, sin, kv, pos, attn_mask)  # [B, T, d]
        cache.pos = pos + T
        return self.last_logits(x[:, -1])  # [B, padded_vocab]

    def last_logits(self, h: Tensor) -> Tensor:
        """Logits of one position per row, h [B, d] -> [B, padded_vocab], in float32 (or wider)
        whatever the autocast or weight dtype: a bf16 row would round near-equal logits to ties."""
        dtype = torch.promote_types(h.dtype, torch.float32)
        ln = self.ln_f
        with torch.autocast(h.device.type, enabled=False):
            h = F.layer_norm(h.to(dtype), ln.normalized_shape, ln.weight.to(dtype),
                             None if ln.bias is None else ln.bias.to(dtype), ln.eps)  # [B, d]
            return F.linear(h, self.lm_head.weight.to(dtype))  # [B, padded_vocab]

    # -- Hugging Face interop -----------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path) -> "GPT":
        """The GPT of a transformers folder written by ``python -m igsm export`` (or a compatible
        GPT-NeoX trained elsewhere), in eval mode; :func:`igsm.hf.load_pretrained` also returns
        its tokenizer and training config. Needs the extra ``[hf]``."""
        from igsm.hf import load_pretrained

        return load_pretrained(path).model

    # -- size and cost ------------------------------------------------------------------------

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters (the tied embedding counted once); optionally without it."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward) = 6N + 12 * L * d * T.

        6N: each parameter is one multiply-add (2 FLOPs) forward and two backward; N includes
        the tied embedding because it is the output head's matmul. 12*L*d*T: the attention
        score and value products (q@k^T and att@v: 2 * 2*d*T FLOPs per token per layer forward,
        times 3 for forward + backward). The PaLM appendix B / nanoGPT estimate used for MFU;
        it counts the full T x T score matrix although causal attention needs half.
        """
        L, d = self.cfg.n_layer, self.cfg.d_model
        return 6 * self.num_params() + 12 * L * d * seq_len


def cached_attention_mask(key_valid: Tensor, pos: int, T: int) -> Tensor:
    """Mask [B, 1, T, S] (True = attend) for queries at positions pos..pos+T-1 over keys 0..S-1.

    key_valid [B, S] marks real keys (False = padding or not written yet). A query attends to
    valid keys at its own or earlier positions. A padded query also attends to itself, so no
    softmax row is empty: an empty row gives NaN on some SDPA backends, and NaN written into the
    cache would poison real rows through 0 * NaN in the attention-times-values product.
    """
    S = key_valid.shape[1]
    q_pos = torch.arange(pos, pos + T, device=key_valid.device)[:, None]  # [T, 1]
    k_pos = torch.arange(S, device=key_valid.device)[None, :]  # [1, S]
    causal = k_pos <= q_pos  # [T, S]
    allowed = key_valid[:, None, :] | (k_pos == q_pos)[None]  # [B, T, S]
    return (causal[None] & allowed)[:, None]  # [B, 1, T, S]


class LayerCache(NamedTuple):
    """One layer's share of a KVCache: the full buffers and views of the attended span."""

    k: Tensor  # [B, H, max_len, hd]
    v: Tensor  # [B, H, max_len, hd]
    k_span: Tensor  # [B, H, S, hd], a view of k
    v_span: Tensor  # [B, H, S, hd], a view of v


class KVCache:
    """Preallocated keys and values for all layers: static shapes, no torch.cat while decoding.

    k, v: [n_layer, B, H, max_len, head_dim]; valid: [B, max_len] bool (False = padding or not
    yet written); pos: how many positions are filled (the next write goes there). The per-layer
    views of the attended span and the one-token step mask (a view of ``step_bias``, the additive
    form of ``valid``) are built once per CACHE_MULTIPLE positions by :meth:`span`, not per step.
    """

    def __init__(
        self, *, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
        device: torch.device, dtype: torch.dtype,
    ) -> None:
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch, max_len, device=device, dtype=torch.bool)
        # valid as an additive attention bias (0 = attend, -inf = not): SDPA takes it as is,
        # where a bool mask would be converted (three ops) in every layer of every step.
        self.step_bias = torch.full((batch, max_len), float("-inf"), device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0
        self.rope_cos: Optional[Tensor] = None  # [max_len, hd/2], set by GPT.new_kv_cache
        self.rope_sin: Optional[Tensor] = None
        self.span_len = 0
        self._layers: list[LayerCache] = []
        self.step_mask: Optional[Tensor] = None  # [B, 1, 1, S] view of step_bias

    def span(self, S: int) -> list[LayerCache]:
        """Per layer, the buffers and views of the first S positions (rebuilt when S changes)."""
        if S != self.span_len:
            self.span_len = S
            layers = [(self.k[i], self.v[i]) for i in range(self.k.shape[0])]  # single views, writable
            self._layers = [LayerCache(k, v, k[:, :, :S], v[:, :, :S]) for k, v in layers]
            self.step_mask = self.step_bias[:, None, None, :S]  # [B, 1, 1, S], a view: follows step_bias
        return self._layers


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


__all__ = ["GPT", "GPTOutput", "KVCache", "LayerCache", "build_rope_cache", "apply_rope", "cached_attention_mask"]
