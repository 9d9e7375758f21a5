"""GPT with RoPE, KV-cache decoding: invariants and parity with reference implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from igsm.config import ModelConfig
from igsm.decode import greedy_decode
from igsm.model import GPT, apply_rope, build_rope_cache, cached_attention_mask

VOCAB = 50


def tiny_model(n_embd: int = 32, dtype: torch.dtype = torch.float32, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=n_embd, block_size=128, **kw)
    return GPT(cfg, VOCAB).to(dtype).eval()


def random_ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


# -- shapes and bookkeeping --------------------------------------------------------------------

@pytest.mark.parametrize("vocab, padded", [(50, 64), (64, 64), (65, 128), (1000, 1024)])
def test_vocab_padded_to_multiple_of_64(vocab: int, padded: int) -> None:
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32), vocab)
    assert (model.vocab_size, model.padded_vocab) == (vocab, padded)
    assert model.wte.weight.shape == (padded, 16)
    assert model(torch.zeros(1, 3, dtype=torch.long)).logits.shape == (1, 3, padded)


def test_rope_cache_not_in_checkpoint_and_embeddings_tied() -> None:
    model = tiny_model()
    keys = model.state_dict().keys()
    assert not any("rope" in k for k in keys)
    head_dim = 32 // 2
    assert model.rope_cos.shape == model.rope_sin.shape == (model.cfg.block_size, head_dim // 2)
    assert model.lm_head.weight is model.wte.weight


def test_init_follows_gpt2() -> None:
    torch.manual_seed(0)
    L, d = 4, 256
    model = GPT(ModelConfig(n_layer=L, n_head=4, n_embd=d, block_size=32), 4096)
    resid_std = 0.02 / math.sqrt(2 * L)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.c_proj.weight.std().item() == pytest.approx(resid_std, rel=0.05)
    assert model.blocks[0].mlp.c_proj.weight.std().item() == pytest.approx(resid_std, rel=0.05)
    assert torch.all(model.blocks[0].attn.c_attn.bias == 0)
    assert torch.all(model.ln_f.weight == 1) and torch.all(model.ln_f.bias == 0)


def expected_params(L: int, h: int, vocab: int, bias: bool = True) -> int:
    """Closed form for GPT-2 with RoPE and a tied, 64-padded embedding (d = 64 h):

    per block, with bias:  ln_1 2d + c_attn (3d^2 + 3d) + attn c_proj (d^2 + d)
                           + ln_2 2d + c_fc (4d^2 + 4d) + mlp c_proj (4d^2 + d) = 12d^2 + 13d
    per block, no bias:    12d^2 + 2d (the two LayerNorm weights)
    plus the embedding padded_vocab * d and ln_f (2d with bias, d without).
    """
    d = 64 * h
    padded_vocab = math.ceil(vocab / 64) * 64
    per_block = 12 * d * d + (13 * d if bias else 2 * d)
    return L * per_block + padded_vocab * d + (2 * d if bias else d)


@pytest.mark.parametrize("L, h", [(12, 12), (4, 21)])
@pytest.mark.parametrize("bias", [True, False])
def test_param_count_matches_closed_form(L: int, h: int, bias: bool) -> None:
    vocab = 1000
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = GPT(ModelConfig(n_layer=L, n_head=h, bias=bias), vocab)
    assert model.num_params() == expected_params(L, h, vocab, bias)
    assert model.num_params(exclude_embeddings=True) == expected_params(L, h, vocab, bias) - 1024 * 64 * h
    T = 768
    assert model.flops_per_token(T) == 6 * expected_params(L, h, vocab, bias) + 12 * L * 64 * h * T


def test_gpt2_12_12_is_gpt2_small_sized() -> None:
    with torch.device("meta"):
        model = GPT(ModelConfig(n_layer=12, n_head=12), 50257)
    # GPT-2 small is 124.4M with learned positions (1024 * 768 = 0.79M) and vocab 50257.
    assert model.num_params() == 124_439_808 - 1024 * 768 + (50304 - 50257) * 768


# -- forward -----------------------------------------------------------------------------------

def test_causal_later_tokens_do_not_change_earlier_logits() -> None:
    model = tiny_model()
    idx = random_ids(2, 20)
    changed = idx.clone()
    t = 12
    changed[:, t] = (changed[:, t] + 1) % VOCAB
    a, b = model(idx).logits, model(changed).logits
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert (a[:, t:] - b[:, t:]).abs().amax(dim=-1).min() > 1e-5  # the change is seen from t on


def test_hidden_states_layout() -> None:
    model = tiny_model()
    idx = random_ids(2, 10)
    out = model(idx, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == model.cfg.n_layer + 1
    assert all(h.shape == (2, 10, 32) for h in hs)
    torch.testing.assert_close(hs[0], model.wte(idx))  # index 0 = embedding output
    torch.testing.assert_close(model.blocks[0](hs[0], model.rope_cos[:10], model.rope_sin[:10]), hs[1])
    torch.testing.assert_close(model.lm_head(model.ln_f(hs[-1])), out.logits)  # last = before ln_f
    no_logits = model(idx, output_hidden_states=True, compute_logits=False)
    assert no_logits.logits is None and no_logits.loss is None
    torch.testing.assert_close(no_logits.hidden_states[-1], hs[-1])
    assert model(idx).hidden_states is None


def test_embed_delta() -> None:
    model = tiny_model()
    idx = random_ids(2, 10)
    base = model(idx, output_hidden_states=True)
    r, d = 8, 32
    U = torch.zeros(model.padded_vocab, r)
    V = torch.randn(r, d)
    zero = model(idx, embed_delta=(U, V), output_hidden_states=True)
    torch.testing.assert_close(zero.logits, base.logits, rtol=0, atol=0)

    U = torch.randn(model.padded_vocab, r)
    delta = model(idx, embed_delta=(U, V), output_hidden_states=True)
    torch.testing.assert_close(delta.hidden_states[0], model.wte(idx) + U[idx] @ V)
    assert (delta.logits - base.logits).abs().max() > 1e-3
    # The output head stays the plain tied embedding.
    torch.testing.assert_close(delta.logits, model.ln_f(delta.hidden_states[-1]) @ model.wte.weight.T)


def test_loss_ignores_minus_100() -> None:
    model = tiny_model()
    idx = random_ids(2, 12)
    targets = random_ids(2, 12, seed=2)
    targets[0, :5] = -100
    targets[1, 8:] = -100
    out = model(idx, targets)
    keep = targets != -100
    expected = F.cross_entropy(out.logits[keep], targets[keep])  # mean over kept positions only
    torch.testing.assert_close(out.loss, expected)
    targets[0, 0] = 3  # an ignored position that now counts changes the loss
    assert not torch.allclose(model(idx, targets).loss, out.loss)
    with pytest.raises(ValueError):
        model(idx, targets, compute_logits=False)


def test_loss_is_gradable_and_reaches_all_parameters() -> None:
    model = tiny_model().train()
    idx = random_ids(2, 12)
    model(idx, random_ids(2, 12, seed=2)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# -- RoPE and attention ------------------------------------------------------------------------

def test_rope_scores_depend_only_on_relative_position() -> None:
    hd, T, shift = 16, 40, 7
    cos, sin = build_rope_cache(T + shift, hd, base=10000.0)
    assert cos.shape == sin.shape == (T + shift, hd // 2)
    torch.manual_seed(0)
    q, k = torch.randn(hd, dtype=torch.float64), torch.randn(hd, dtype=torch.float64)
    # The same q and k vectors at every position: scores differ only through the rotation.
    q_rot = apply_rope(q.expand(T + shift, hd), cos, sin)  # [T+s, hd]
    k_rot = apply_rope(k.expand(T + shift, hd), cos, sin)  # [T+s, hd]
    scores = q_rot @ k_rot.T  # [m, n]
    # (m, n) ~ (m+s, n+s); the tables are float32, so angles carry float32 rounding
    torch.testing.assert_close(scores[:T, :T], scores[shift:, shift:], rtol=0, atol=1e-5)
    assert (scores[0, 0] - scores[0, 5]).abs() > 1e-3  # but not constant: position matters
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm().expand(T + shift), rtol=1e-6, atol=0)  # a rotation
    torch.testing.assert_close(apply_rope(q.expand(1, hd), cos[:1], sin[:1])[0], q)  # pos 0 = identity


def explicit_attention(attn, x, cos, sin, mask=None):
    """Reference: softmax(q k^T / sqrt(hd) + causal mask) v, written out."""
    B, T, C = x.shape
    H, hd = attn.n_head, attn.head_dim
    q, k, v = attn.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in (q, k, v))
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # [B, H, T, T]
    if mask is None:
        mask = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    y = scores.softmax(dim=-1) @ v  # [B, H, T, hd]
    return attn.c_proj(y.transpose(1, 2).reshape(B, T, C))


def test_sdpa_matches_explicit_attention() -> None:
    model = tiny_model(dtype=torch.float64)
    attn = model.blocks[0].attn
    x = torch.randn(3, 17, 32, dtype=torch.float64)
    cos, sin = model.rope_cos[:17], model.rope_sin[:17]
    torch.testing.assert_close(attn(x, cos, sin), explicit_attention(attn, x, cos, sin))


def test_cached_attention_with_left_padding_matches_unpadded() -> None:
    """A left-padded row through the cached path equals the same prompt without padding."""
    model = tiny_model(dtype=torch.float64)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
    P = 7
    idx = torch.tensor([prompts[0], [0] * 4 + prompts[1]])
    valid = torch.tensor([[True] * 7, [False] * 4 + [True] * 3])
    cache = model.new_kv_cache(2, P + 1)
    last = model.forward_cached(idx, cache, valid)  # [2, V]
    for row, prompt in enumerate(prompts):
        ref = model(torch.tensor([prompt])).logits[0, -1]
        torch.testing.assert_close(last[row], ref)
    assert torch.isfinite(cache.k).all() and torch.isfinite(cache.v).all()  # no NaN from padding
    # One more token through the cache equals a full recomputation of prompt + token.
    nxt = torch.tensor([[3], [4]])
    step = model.forward_cached(nxt, cache)
    for row, prompt in enumerate(prompts):
        ref = model(torch.tensor([prompt + [int(nxt[row])]])).logits[0, -1]
        torch.testing.assert_close(step[row], ref)


def test_cached_attention_mask() -> None:
    # Row 0: 2 pads then 3 real tokens; row 1: all real. Prefill of 5, then one step at pos 5.
    valid = torch.tensor([[False, False, True, True, True, False], [True] * 5 + [False]])
    prefill = cached_attention_mask(valid, pos=0, T=5)[:, 0]  # [B, T, S]
    assert prefill.shape == (2, 5, 6)
    assert prefill.any(dim=-1).all()  # no empty softmax row, padded queries included
    assert prefill[0, 0].tolist() == [True, False, False, False, False, False]  # a pad sees itself only
    assert prefill[0, 3].tolist() == [False, False, True, True, False, False]  # real: real keys <= pos
    assert prefill[1].tolist() == torch.ones(5, 6, dtype=torch.bool).tril()[:, :6].tolist()
    valid[:, 5] = True
    step = cached_attention_mask(valid, pos=5, T=1)[:, 0, 0]  # [B, S]
    assert step.tolist() == [[False, False, True, True, True, True], [True] * 6]


# -- decoding ----------------------------------------------------------------------------------

def reference_greedy(model: GPT, prompt: list[int], max_new_tokens: int, stop_ids: set[int]) -> list[int]:
    """Greedy decoding by full recomputation, one unpadded prompt at a time."""
    seq, new = list(prompt), []
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([seq])).logits[0, -1, : model.vocab_size]
        tok = int(logits.argmax())
        seq.append(tok)
        new.append(tok)
        if tok in stop_ids:
            break
    return new


def decode_model() -> GPT:
    """A random model with large weights, so greedy outputs vary instead of echoing the input."""
    model = tiny_model(dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def test_kv_cache_decoding_equals_full_recomputation() -> None:
    model = decode_model()
    g = torch.Generator().manual_seed(3)
    lengths = [9, 3, 14, 1, 6, 11, 9]
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]
    N = 12
    free = [reference_greedy(model, p, N, set()) for p in prompts]
    assert len({tuple(f) for f in free}) > 1  # outputs differ per prompt, so order is tested
    # A stop id that some rows produce mid-way and others never: exercises early stopping.
    stop = {free[0][4]}
    expected = [reference_greedy(model, p, N, stop) for p in prompts]
    assert any(len(e) < N for e in expected)
    for bs in (3, 256):  # several batches (sorted and regrouped) and one batch
        got = greedy_decode(model, prompts, max_new_tokens=N, stop_ids=stop, pad_id=0, batch_size=bs)
        assert got == expected
    assert greedy_decode(model, prompts, max_new_tokens=N, stop_ids=[], pad_id=0) == free


def test_decode_never_emits_padding_vocab_ids() -> None:
    model = decode_model()
    with torch.no_grad():  # make a padding-vocab row win every argmax: ln_f(x) ~ b, wte[pad] = 10 b
        model.ln_f.weight.fill_(1e-3)
        model.ln_f.bias.normal_(0.0, 1.0)
        model.wte.weight[VOCAB] = 10 * model.ln_f.bias
    prompts = [[1, 2, 3], [4, 5]]
    assert int(model(torch.tensor([prompts[0]])).logits[0, -1].argmax()) == VOCAB  # the trap is set
    out = greedy_decode(model, prompts, max_new_tokens=4, stop_ids=[], pad_id=0)
    assert all(0 <= t < VOCAB for o in out for t in o)


def test_decode_restores_training_mode_and_runs_under_bf16_autocast() -> None:
    model = decode_model().float().train()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = greedy_decode(model, prompts, max_new_tokens=5, stop_ids={VOCAB + 1}, pad_id=0)
    assert model.training
    assert [len(o) for o in out] == [5, 5]
    assert all(0 <= t < VOCAB for o in out for t in o)


class AlternatingModel(nn.Module):
    """Decodes "D x D x ...": after D its favourite letters are 10 > 11 > 12, else D (id 5)."""

    vocab_size = 16

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(self.vocab_size, 1)

    def new_kv_cache(self, *args, **kwargs):
        return None

    def forward_cached(self, idx, cache, valid=None):
        last = idx[:, -1]  # [B]
        logits = torch.zeros(idx.shape[0], self.vocab_size)
        logits[:, 5] = torch.where(last == 5, -1.0, 3.0)
        logits[:, 10:13] = torch.where(last == 5, 1.0, -1.0)[:, None] * torch.tensor([3.0, 2.0, 1.0])
        return logits


def test_fresh_letters_skips_the_letters_a_row_already_defined() -> None:
    model = AlternatingModel()
    prompts = [[1, 2], [5]]  # the second row starts right after a D
    plain = greedy_decode(model, prompts, max_new_tokens=6, stop_ids=[], pad_id=0)
    assert plain == [[5, 10, 5, 10, 5, 10], [10, 5, 10, 5, 10, 5]]  # greedy repeats letter 10
    fresh = greedy_decode(model, prompts, max_new_tokens=6, stop_ids=[], pad_id=0, fresh_letters=(5, [10, 11, 12]))
    assert fresh == [[5, 10, 5, 11, 5, 12], [10, 5, 11, 5, 12, 5]]  # each row its own fresh letters
