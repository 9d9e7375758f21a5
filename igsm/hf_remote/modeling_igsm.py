"""igsm's GPT with Canon layers for transformers (remote code: imports only torch and transformers).

Written next to the weights by igsm's ``python -m igsm export``. Load it with
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True, local_files_only=True)``.
The math is igsm's model: pre-LayerNorm GPT-2 blocks, rotary embeddings on the first
``rotary_dim`` dims of each head, tied embeddings, and Canon layers ``h + conv(h)`` (a causal
depthwise convolution over the last ``canon_kernel`` positions, no bias) where ``config.canon``
says (see ``configuration_igsm.py``). Parameter names are igsm's under ``transformer.``.

Padding: ``attention_mask`` (1 = real token, 0 = left padding) masks padded keys out of
attention, and padded positions enter the Canon convolutions as zeros. Without position ids
each row uses the shared grid ``0 .. S-1`` (rotary scores depend only on relative positions).

Cached decoding (``generate``): :class:`IgsmCache` is transformers' ``DynamicCache`` (keys and
values) plus, per layer and Canon position, the layer's last ``canon_kernel - 1`` inputs. It
follows beam reordering and batch selection; cropping (assisted decoding) is not supported.

``output_hidden_states=True`` returns L + 1 states: the embedding output, the residual stream
after each block, and, as in transformers' own models, the last one after the final LayerNorm.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from torch import Tensor
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_igsm import IgsmConfig

# transformers 5 names the cache "cache" in outputs (4.x: "past_key_values"); tied weights are
# a dict {target: source} since 5, a list of targets before.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
CANON_CHANNELS = {"A": 1, "B": 3, "C": 1, "D": 4}  # channels of each Canon position, in units of d


class IgsmCache(DynamicCache):
    """Keys and values (``DynamicCache``) and each Canon layer's last k-1 inputs [B, k-1, C]."""

    def __init__(self) -> None:
        super().__init__()
        self.canon_states: dict[tuple[int, str], Tensor] = {}  # (layer, position letter) -> [B, k-1, C]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.canon_states = {k: s.index_select(0, beam_idx.to(s.device)) for k, s in self.canon_states.items()}

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.canon_states = {k: s.repeat_interleave(repeats, dim=0) for k, s in self.canon_states.items()}

    def batch_select_indices(self, indices: Tensor) -> None:
        super().batch_select_indices(indices)
        self.canon_states = {k: s[indices] for k, s in self.canon_states.items()}

    def reset(self) -> None:
        super().reset()
        self.canon_states = {}

    def crop(self, *args, **kwargs) -> None:
        raise NotImplementedError("IgsmCache keeps only the last canon_kernel - 1 inputs of each Canon layer, "
                                  "so it cannot be cropped (assisted decoding); generate without an assistant")


def _rope_tables(position_ids: Tensor, rotary_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos, sin [B, T, r/2] (float32) for position_ids [B, T]: pair (x[i], x[i + r/2]) turns by
    position * base^(-2i/r)."""
    inv_freq = base ** (-torch.arange(0, rotary_dim, 2, device=position_ids.device, dtype=torch.float32) / rotary_dim)
    angles = position_ids.to(torch.float32)[..., None] * inv_freq  # [B, T, r/2]
    return angles.cos(), angles.sin()


def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first r dims of x [B, H, T, hd] ("rotate half" layout); cos, sin [B, T, r/2]."""
    half = cos.shape[-1]
    if half == 0:
        return x  # NoPE
    rot = 2 * half
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # [B, 1, T, r/2]
    x1, x2 = x[..., :half], x[..., half:rot]  # [B, H, T, r/2] each
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., rot:]), dim=-1)  # [B, H, T, hd]


class IgsmCanon(nn.Module):
    """h + conv(h): causal depthwise convolution over the last ``kernel`` positions, no bias."""

    def __init__(self, channels: int, kernel: int, key: tuple[int, str]) -> None:
        super().__init__()
        self.kernel = kernel
        self.key = key  # (layer, position letter): where the cache keeps this layer's state
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel))  # [C, 1, k], as nn.Conv1d

    def forward(self, h: Tensor, valid: Optional[Tensor], cache: Optional[IgsmCache]) -> Tensor:
        """h [B, T, C] -> [B, T, C]; valid [B, T] bool (False: padding, read as zeros)."""
        B, T, C = h.shape
        k1 = self.kernel - 1
        x = h if valid is None else torch.where(valid[..., None], h, torch.zeros((), dtype=h.dtype, device=h.device))
        prev = cache.canon_states.get(self.key) if cache is not None else None
        if prev is None:
            prev = x.new_zeros(B, k1, C)  # nothing before the first token
        xx = torch.cat((prev, x), dim=1)  # [B, k-1+T, C]
        if cache is not None and k1 > 0:
            cache.canon_states[self.key] = xx[:, -k1:].contiguous()  # [B, k-1, C]
        y = F.conv1d(xx.transpose(1, 2), self.weight.to(x.dtype), groups=C)  # [B, C, T]
        return h + y.transpose(1, 2)


class IgsmAttention(nn.Module):
    """Causal multi-head attention (SDPA) with rotary q and k; Canon B on the fused q/k/v."""

    def __init__(self, config: IgsmConfig, layer: int) -> None:
        super().__init__()
        d = config.hidden_size
        self.layer = layer
        self.n_head = config.num_attention_heads
        self.head_dim = d // self.n_head
        self.c_attn = nn.Linear(d, 3 * d, bias=config.bias)  # [q | k | v], each [heads, head_dim]
        self.canon_b = IgsmCanon(3 * d, config.canon_kernel, (layer, "B")) if "B" in config.canon else None
        self.c_proj = nn.Linear(d, d, bias=config.bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, valid: Optional[Tensor],
                cache: Optional[IgsmCache]) -> Tensor:
        """x [B, T, d] -> [B, T, d]; mask [B or 1, 1, T, S] bool (True = attend) over the S keys."""
        B, T, C = x.shape
        qkv = self.c_attn(x)  # [B, T, 3d]
        if self.canon_b is not None:
            qkv = self.canon_b(qkv, valid, cache)
        qkv = qkv.view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, T, hd]
        q, k, v = _apply_rope(qkv[0], cos, sin), _apply_rope(qkv[1], cos, sin), qkv[2]  # [B, H, T, hd] each
        if cache is not None:
            k, v = cache.update(k, v, self.layer)  # [B, H, S, hd]: the cached keys, then these
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, hd]
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class IgsmMLP(nn.Module):
    """d -> 4d -> (Canon D) -> exact GELU -> d."""

    def __init__(self, config: IgsmConfig, layer: int) -> None:
        super().__init__()
        d = config.hidden_size
        self.c_fc = nn.Linear(d, 4 * d, bias=config.bias)
        self.canon_d = IgsmCanon(4 * d, config.canon_kernel, (layer, "D")) if "D" in config.canon else None
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * d, d, bias=config.bias)

    def forward(self, x: Tensor, valid: Optional[Tensor], cache: Optional[IgsmCache]) -> Tensor:
        h = self.c_fc(x)  # [B, T, 4d]
        if self.canon_d is not None:
            h = self.canon_d(h, valid, cache)
        return self.c_proj(self.gelu(h))  # [B, T, d]


class IgsmBlock(nn.Module):
    """x + attn(canon_a(ln_1(x))), then x + mlp(canon_c(ln_2(x)))."""

    def __init__(self, config: IgsmConfig, layer: int) -> None:
        super().__init__()
        d, k, eps = config.hidden_size, config.canon_kernel, config.layer_norm_eps
        self.ln_1 = nn.LayerNorm(d, eps=eps, bias=config.bias)
        self.canon_a = IgsmCanon(d, k, (layer, "A")) if "A" in config.canon else None
        self.attn = IgsmAttention(config, layer)
        self.ln_2 = nn.LayerNorm(d, eps=eps, bias=config.bias)
        self.canon_c = IgsmCanon(d, k, (layer, "C")) if "C" in config.canon else None
        self.mlp = IgsmMLP(config, layer)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, valid: Optional[Tensor],
                cache: Optional[IgsmCache]) -> Tensor:
        h = self.ln_1(x)  # [B, T, d]
        if self.canon_a is not None:
            h = self.canon_a(h, valid, cache)
        x = x + self.attn(h, cos, sin, mask, valid, cache)
        h = self.ln_2(x)
        if self.canon_c is not None:
            h = self.canon_c(h, valid, cache)
        return x + self.mlp(h, valid, cache)  # [B, T, d]


class IgsmPreTrainedModel(PreTrainedModel):
    config_class = IgsmConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["IgsmBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2's initialisation (std 0.02, zero biases, unit LayerNorms), nn.Conv1d's default for
        Canon weights: used only for weights a folder does not hold."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, IgsmCanon):
            bound = module.kernel ** -0.5
            nn.init.uniform_(module.weight, -bound, bound)


class IgsmModel(IgsmPreTrainedModel):
    """Embedding, blocks and final LayerNorm (no output head)."""

    def __init__(self, config: IgsmConfig) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(IgsmBlock(config, i) for i in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.bias)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.wte = value

    def forward(self, input_ids: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
                position_ids: Optional[Tensor] = None, cache: Optional[IgsmCache] = None,
                inputs_embeds: Optional[Tensor] = None, output_hidden_states: bool = False):
        """-> (last hidden state [B, T, d] after ln_f, hidden states or None)."""
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, d]
        B, T = x.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        S = past + T
        if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.shape[1] != S):
            raise ValueError(f"attention_mask: expected shape [batch, {S}] (1 = token, 0 = padding) over the "
                             f"{past} cached and {T} new positions, got {tuple(attention_mask.shape)}")
        if position_ids is None:
            position_ids = torch.arange(past, S, device=x.device)[None].expand(B, T)  # the shared grid
        cos, sin = _rope_tables(position_ids, self.config.rotary_dim, float(self.config.rope_base))  # [B, T, r/2]

        q_pos = torch.arange(past, S, device=x.device)[:, None]  # [T, 1]
        k_pos = torch.arange(S, device=x.device)[None, :]  # [1, S]
        causal = k_pos <= q_pos  # [T, S]
        valid = None
        if attention_mask is None:
            mask = causal[None, None]  # [1, 1, T, S]
        else:
            key_ok = attention_mask.bool()  # [B, S]
            valid = key_ok[:, past:]  # [B, T]
            # A padded query attends to itself, so no softmax row is empty (an empty row gives NaN).
            mask = (causal[None] & (key_ok[:, None, :] | (k_pos == q_pos)[None]))[:, None]  # [B, 1, T, S]

        hidden = [x] if output_hidden_states else None
        for block in self.blocks:
            x = block(x, cos, sin, mask, valid, cache)  # [B, T, d]
            if hidden is not None:
                hidden.append(x)
        x = self.ln_f(x)
        if hidden is not None:
            hidden[-1] = x  # transformers' convention: the last state is after the final norm
        return x, None if hidden is None else tuple(hidden)


class IgsmForCausalLM(IgsmPreTrainedModel, GenerationMixin):
    """igsm's GPT with its (tied) language-model head."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"} if _TRANSFORMERS_5 else ["lm_head.weight"]

    def __init__(self, config: IgsmConfig) -> None:
        super().__init__(config)
        self.transformer = IgsmModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate must not make a plain DynamicCache: forward makes an IgsmCache

    def forward(self, input_ids: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
                position_ids: Optional[Tensor] = None, cache: Optional[IgsmCache] = None,
                past_key_values: Optional[IgsmCache] = None, inputs_embeds: Optional[Tensor] = None,
                labels: Optional[Tensor] = None, use_cache: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None,
                logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast:
        """Logits [B, T, vocab] (the last ``logits_to_keep`` positions when > 0); loss with labels
        (next-token cross-entropy, -100 ignored). ``cache`` (``past_key_values`` before
        transformers 5) continues a sequence; with ``use_cache`` the returned cache does."""
        cache = cache if cache is not None else past_key_values
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(self.config, "output_hidden_states", False))
        if cache is not None and not isinstance(cache, IgsmCache):
            if cache.get_seq_length() > 0:
                raise ValueError(f"cache: an IgsmCache is needed (Canon layers keep state), got a filled "
                                 f"{type(cache).__name__}")
            cache = None  # an empty foreign cache: start our own
        if use_cache and cache is None:
            cache = IgsmCache()
        x, hidden = self.transformer(input_ids, attention_mask, position_ids, cache if use_cache else None,
                                     inputs_embeds, output_hidden_states)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(x)  # [B, T', vocab]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=hidden,
                                     **{_CACHE_FIELD: cache if use_cache else None})
        return out.to_tuple() if return_dict is False else out


__all__ = ["IgsmCache", "IgsmModel", "IgsmForCausalLM", "IgsmPreTrainedModel"]
