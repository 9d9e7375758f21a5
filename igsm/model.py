"""GPT-2 with rotary position embeddings (docs/spec.md#16-the-papers-recipe), as a plain ``nn.Module``.

Read top to bottom: RoPE functions, attention, MLP, block, the model, then the KV cache used for
batched decoding. ``GPT2-l-h`` means ``ModelConfig(n_layer=l, n_head=h)`` (hidden size 64*h).

Beyond a standard GPT-2, the forward pass serves the V-probe (docs/spec.md#13-the-probe-labels-and-regret):
- ``output_hidden_states=True`` returns the residual stream after every block;
- ``embed_delta=(U, V)`` adds a rank-r update ``U[idx] @ V`` to the input embedding only;
- ``compute_logits=False`` skips the language-model head when only hidden states are needed.

Options beyond the paper's model (``ModelConfig``; defaults keep the paper's GPT-2): Canon layers
(``canon``, ``canon_kernel``: :class:`Canon`) and partial RoPE or none (``rope_dim``).

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
    """Rotate x [..., T, head_dim] by the angles of its positions; cos, sin are [T, r // 2].

    Because every pair is rotated by an angle linear in the position, the dot product of a
    rotated query at m with a rotated key at n depends only on m - n. Partial RoPE (r < head_dim,
    GPT-NeoX's ``rotary_pct``): only the first r dims rotate, pairing (x[i], x[i + r/2]); the
    other head_dim - r pass through. r = 0: x unchanged (NoPE).
    """
    half = cos.shape[-1]
    rot = 2 * half
    if rot == 0:
        return x
    if cos.dtype != x.dtype:  # the decoding cache holds tables already in its dtype: no cast per step
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:rot]  # [..., T, r/2] each
    rotated = (x1 * cos - x2 * sin, x1 * sin + x2 * cos)
    if rot == x.shape[-1]:
        return torch.cat(rotated, dim=-1)  # [..., T, hd]
    return torch.cat((*rotated, x[..., rot:]), dim=-1)  # [..., T, hd]


# ---------------------------------------------------------------------------------------------
# Canon layers: a causal depthwise convolution added back to its stream.
# ---------------------------------------------------------------------------------------------

def causal_conv_shift(x: Tensor, weight: Tensor, prev: Optional[Tensor] = None) -> Tensor:
    """y[t] = sum_i weight[:, i] * x[t - (k - 1 - i)] as k multiply-adds of shifted views.

    x [B, T, C], weight [C, k] (tap k-1 is the current position), prev [B, k-1, C]: the inputs
    just before x (None = zeros, as at the start of a training window).
    """
    k = weight.shape[1]
    T = x.shape[1]
    if prev is None:
        xx = F.pad(x, (0, 0, k - 1, 0))  # [B, k-1+T, C], zeros before the window
    else:
        xx = torch.cat((prev, x), dim=1)  # [B, k-1+T, C]
    w = weight.to(x.dtype).t()  # [k, C]
    y = xx[:, k - 1 :] * w[k - 1]  # [B, T, C]
    for i in range(k - 1):
        y = y + xx[:, i : i + T] * w[i]
    return y


def causal_conv_conv1d(x: Tensor, weight: Tensor, prev: Optional[Tensor] = None) -> Tensor:
    """The same as :func:`causal_conv_shift` with one ``F.conv1d`` (groups = channels)."""
    k = weight.shape[1]
    if prev is None:
        xx = F.pad(x.transpose(1, 2), (k - 1, 0))  # [B, C, k-1+T]
    else:
        xx = torch.cat((prev, x), dim=1).transpose(1, 2)  # [B, C, k-1+T]
    y = F.conv1d(xx, weight.to(x.dtype)[:, None, :], groups=weight.shape[0])  # [B, C, T]
    return y.transpose(1, 2)  # [B, T, C]


def canon_conv():
    """The faster convolution here (``python benchmarks/canon.py`` prints the comparison): under
    torch.compile the shifted multiply-adds fuse into one kernel (3x faster than conv1d on a CPU);
    eager, one ``F.conv1d`` call beats 2k elementwise passes (2x in fp32 on a CPU). Measured on
    CPUs only so far; the same rule is assumed on GPUs."""
    return causal_conv_shift if torch.compiler.is_compiling() else causal_conv_conv1d


class Canon(nn.Module):
    """h + conv(h): a causal depthwise convolution over the last k positions of one stream, one
    weight per channel and tap, no bias, no activation (Part 4.1's Canon layer).

    The weight has nn.Conv1d's shape [C, 1, k] and PyTorch's default initialisation (uniform in
    +-1/sqrt(k)), not the model's std 0.02. During cached decoding ``state`` [B, k-1, C] holds the
    layer's last k-1 inputs per row (see :class:`KVCache`).
    """

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel))  # [C, 1, k], as nn.Conv1d
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv1d's default: U(+-1/sqrt(k))

    def forward(self, h: Tensor, state: Optional[Tensor] = None, valid: Optional[Tensor] = None) -> Tensor:
        """h [B, T, C] -> [B, T, C]. state [B, k-1, C] (cached decoding): the previous inputs,
        updated in place to the last k-1 inputs; valid [B, T] bool: False (left padding) enters
        the convolution as zeros."""
        x = h if valid is None else h * valid[..., None].to(h.dtype)  # [B, T, C]
        if state is not None and x.shape[1] == 1 and self.kernel > 1:
            return h + self.step(x, state).to(h.dtype)  # [B, 1, C]
        y = canon_conv()(x, self.weight[:, 0], state)  # [B, T, C]
        if state is not None and self.kernel > 1:
            k1 = self.kernel - 1
            tail = torch.cat((state, x), dim=1)[:, -k1:] if x.shape[1] < k1 else x[:, -k1:]  # [B, k-1, C]
            state.copy_(tail)
        return h + y

    def step(self, x: Tensor, state: Tensor) -> Tensor:
        """The convolution at one new position (a cached decoding step): x [B, 1, C] -> [B, 1, C].

        The last k inputs times the weight, summed over the taps, and the state rolled on by one
        position: one cat, one multiply, one sum and one copy, where the convolution path took
        about twice the ops per step (cat, transposes, conv1d, cat, slice, copy)."""
        window = torch.cat((state, x), dim=1)  # [B, k, C]: inputs t-k+1 .. t, oldest first
        state.copy_(window[:, 1:])  # [B, k-1, C]
        # [k, C], tap k-1 is the current position; one small copy into the layout of the window
        # (multiplied by the transposed view, a CPU took ~1.6x as long)
        w = self.weight[:, 0].t().contiguous().to(window.dtype)
        return (window * w).sum(1, keepdim=True)  # [B, 1, C]


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
        self.canon_b = Canon(3 * cfg.d_model, cfg.canon_kernel) if "B" in cfg.canon else None
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)  # residual projection
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv: Optional[LayerCache] = None,
        pos: int = 0,
        attn_mask: Optional[Tensor] = None,
        valid: Optional[Tensor] = None,
    ) -> Tensor:
        """x [B, T, d] -> [B, T, d]. cos/sin cover the T positions of x.

        Plain path (kv None): causal attention over x alone. Cached path: k, v of x are written
        into the layer's cache at pos..pos+T-1 and the queries attend to the cached keys allowed
        by attn_mask [B, 1, T, S] (True = attend), where S is the attended span of the cache
        (``kv.k_span``, ``kv.v_span``: views of its first S positions). valid [B, T]: real tokens
        (Canon layers read padding as zeros).
        """
        B, T, C = x.shape
        qkv = self.c_attn(x)  # [B, T, 3d]
        if self.canon_b is not None:
            qkv = self.canon_b(qkv, None if kv is None else kv.canon.get("B"), valid)  # [B, T, 3d]
        qkv = qkv.view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, T, hd]
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
        self.canon_d = Canon(4 * cfg.d_model, cfg.canon_kernel) if "D" in cfg.canon else None
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)  # residual projection
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, canon_state: Optional[Tensor] = None, valid: Optional[Tensor] = None) -> Tensor:
        h = self.c_fc(x)  # [B, T, 4d]
        if self.canon_d is not None:
            h = self.canon_d(h, canon_state, valid)  # [B, T, 4d]
        return self.dropout(self.c_proj(self.gelu(h)))  # [B, T, d]


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.canon_a = Canon(cfg.d_model, cfg.canon_kernel) if "A" in cfg.canon else None
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.canon_c = Canon(cfg.d_model, cfg.canon_kernel) if "C" in cfg.canon else None
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv: Optional[LayerCache] = None,
        pos: int = 0,
        attn_mask: Optional[Tensor] = None,
        valid: Optional[Tensor] = None,
    ) -> Tensor:
        canon = kv.canon if kv is not None else {}  # cached decoding: each Canon layer's last k-1 inputs
        h = self.ln_1(x)  # [B, T, d]
        if self.canon_a is not None:
            h = self.canon_a(h, canon.get("A"), valid)
        x = x + self.attn(h, cos, sin, kv, pos, attn_mask, valid)  # [B, T, d]
        h = self.ln_2(x)  # [B, T, d]
        if self.canon_c is not None:
            h = self.canon_c(h, canon.get("C"), valid)
        x = x + self.mlp(h, canon.get("D"), valid)  # [B, T, d]
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
        cos, sin = build_rope_cache(cfg.block_size, cfg.rotary_dim, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # [block_size, r/2] (r = rotary_dim)
        self.register_buffer("rope_sin", sin, persistent=False)  # [block_size, r/2]

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
        - Canon weights (``canon_a`` .. ``canon_d``): PyTorch's nn.Conv1d default, uniform in
          +-1/sqrt(canon_kernel) (:meth:`Canon.reset_parameters`), as Part 4.1.
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
            elif isinstance(module, Canon):
                module.reset_parameters()

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
    ) -> KVCache:
        """An empty cache for `batch` rows of up to `max_len` positions (prompt + generation)."""
        if max_len > self.cfg.block_size:
            raise ValueError(f"max_len={max_len} exceeds model.block_size={self.cfg.block_size}")
        p = self.wte.weight
        d, k = self.cfg.d_model, self.cfg.canon_kernel
        cache = KVCache(
            n_layer=self.cfg.n_layer, batch=batch, n_head=self.cfg.n_head,
            max_len=min(_round_up(max_len, CACHE_MULTIPLE), self.cfg.block_size),
            head_dim=self.cfg.d_model // self.cfg.n_head,
            device=device or p.device, dtype=dtype or p.dtype,
            canon_channels={c: CANON_CHANNELS[c] * d for c in self.cfg.canon} if k > 1 else {},
            canon_kernel=k,
        )
        # RoPE tables cast once per cache (not per step and layer) to the dtype q and k have.
        cache.rope_cos = self.rope_cos[: cache.max_len].to(cache.k.device, cache.k.dtype)  # [max_len, hd/2]
        cache.rope_sin = self.rope_sin[: cache.max_len].to(cache.k.device, cache.k.dtype)  # [max_len, hd/2]
        return cache

    def forward_cached(self, idx: Tensor, cache: KVCache, valid: Optional[Tensor] = None) -> Tensor:
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

        cos, sin = cache.rope_cos[pos : pos + T], cache.rope_sin[pos : pos + T]  # [T, r/2]
        x = self.wte(idx)  # [B, T, d]
        for block, kv in zip(self.blocks, layers):
            x = block(x, cos, sin, kv, pos, attn_mask, valid)  # [B, T, d]
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
    canon: dict  # Canon position letter -> [B, k-1, channels]: that layer's last k-1 inputs per row


CANON_CHANNELS = {"A": 1, "B": 3, "C": 1, "D": 4}  # channels of each Canon position, in units of d


class KVCache:
    """Preallocated keys and values for all layers: static shapes, no torch.cat while decoding.

    k, v: [n_layer, B, H, max_len, head_dim]; valid: [B, max_len] bool (False = padding or not
    yet written); pos: how many positions are filled (the next write goes there). The per-layer
    views of the attended span and the one-token step mask (a view of ``step_bias``, the additive
    form of ``valid``) are built once per CACHE_MULTIPLE positions by :meth:`span`, not per step.
    """

    def __init__(
        self, *, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
        device: torch.device, dtype: torch.dtype, canon_channels: Optional[dict[str, int]] = None,
        canon_kernel: int = 4,
    ) -> None:
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # Canon layers: per layer and position letter, the last k-1 inputs of each row (zeros
        # before the first token, as at the start of a training window). Rolled forward in place.
        self.canon = [
            {c: torch.zeros(batch, canon_kernel - 1, ch, device=device, dtype=dtype)
             for c, ch in (canon_channels or {}).items()}
            for _ in range(n_layer)
        ]
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
            self._layers = [LayerCache(k, v, k[:, :, :S], v[:, :, :S], canon)
                            for (k, v), canon in zip(layers, self.canon)]
            self.step_mask = self.step_bias[:, None, None, :S]  # [B, 1, 1, S], a view: follows step_bias
        return self._layers


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


__all__ = ["GPT", "GPTOutput", "KVCache", "LayerCache", "Canon", "canon_conv", "causal_conv_shift",
           "causal_conv_conv1d", "build_rope_cache", "apply_rope", "cached_attention_mask"]
