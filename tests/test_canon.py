"""Canon layers and partial RoPE / NoPE (issue 19): definitions, causality, cached decoding."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from igsm.cli_config import load_config
from igsm.config import ConfigError, ModelConfig, TrainConfig
from igsm.decode import greedy_decode
from igsm.model import GPT, Canon, apply_rope, build_rope_cache, causal_conv_conv1d, causal_conv_shift

VOCAB = 50
SUBSETS = ["".join(c) for n in range(5) for c in itertools.combinations("ABCD", n)]  # all 16


def canon_model(canon: str, dtype=torch.float64, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=128, canon=canon, **kw)
    model = GPT(cfg, VOCAB).to(dtype).eval()
    with torch.no_grad():  # large weights: greedy outputs vary instead of echoing the input
        for name, p in model.named_parameters():
            if "canon" not in name:
                p.normal_(0.0, 0.3)
    return model


# -- the layer ---------------------------------------------------------------------------------

@pytest.mark.parametrize("conv", [causal_conv_shift, causal_conv_conv1d])
def test_canon_is_a_causal_depthwise_conv1d_with_zero_start(conv) -> None:
    torch.manual_seed(0)
    ref = nn.Conv1d(6, 6, 4, groups=6, bias=False, padding=3).double()  # pads both sides: keep the first T
    x = torch.randn(3, 11, 6, dtype=torch.float64)
    expected = ref(x.transpose(1, 2))[..., :11].transpose(1, 2)
    torch.testing.assert_close(conv(x, ref.weight[:, 0]), expected)
    # with the previous k-1 inputs given, the window continues the longer sequence
    torch.testing.assert_close(conv(x[:, 3:], ref.weight[:, 0], x[:, :3]), expected[:, 3:])


def test_canon_adds_back_has_no_bias_and_pytorch_default_init() -> None:
    torch.manual_seed(0)
    layer = Canon(512, 4)
    assert [n for n, _ in layer.named_parameters()] == ["weight"] and layer.weight.shape == (512, 1, 4)
    bound = 1 / math.sqrt(4)  # nn.Conv1d's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = k
    assert layer.weight.abs().max() <= bound and layer.weight.std() > 0.25  # not std 0.02
    h = torch.randn(2, 5, 512)
    with torch.no_grad():
        layer.weight.zero_()
    assert torch.equal(layer(h), h)  # h + conv(h): a zero convolution is the identity
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, canon="ABCD"), VOCAB)  # GPT's init keeps it
    canon = [p for n, p in model.named_parameters() if "canon" in n]
    assert len(canon) == 8 and all(p.abs().max() <= bound and p.std() > 0.2 for p in canon)


def test_canon_positions_and_channels() -> None:
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, canon="ABCD", canon_kernel=3), VOCAB)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if "canon" in n}
    assert shapes == {"blocks.0.canon_a.weight": (16, 1, 3), "blocks.0.attn.canon_b.weight": (48, 1, 3),
                      "blocks.0.canon_c.weight": (16, 1, 3), "blocks.0.mlp.canon_d.weight": (64, 1, 3)}
    plain = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16), VOCAB)
    assert model.num_params() - plain.num_params() == (16 + 48 + 16 + 64) * 3
    # FLOPs: each Canon weight is one multiply-add per token, counted by the 6N term
    assert model.flops_per_token(64) - plain.flops_per_token(64) == 6 * (16 + 48 + 16 + 64) * 3


@pytest.mark.parametrize("canon", ["ABCD", "B", "D"])
def test_canon_model_is_causal_and_every_canon_weight_learns(canon: str) -> None:
    model = canon_model(canon)
    idx = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    full = model(idx).logits
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % VOCAB
    torch.testing.assert_close(model(changed).logits[:, :7], full[:, :7])
    assert not torch.allclose(model(changed).logits[:, 7:], full[:, 7:])
    model.train()
    model(idx, idx).loss.backward()
    for name, p in model.named_parameters():
        if "canon" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


# -- cached decoding -----------------------------------------------------------------------------

@pytest.mark.parametrize("canon", SUBSETS)
def test_cached_decoding_equals_full_forward_with_left_padding(canon: str) -> None:
    """Prefill with left padding, then one token at a time: every step's logits equal the full
    forward of the unpadded sequence, for every Canon subset."""
    model = canon_model(canon)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [3]]
    P = 7
    idx = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    valid = torch.tensor([[False] * (P - len(p)) + [True] * len(p) for p in prompts])
    cache = model.new_kv_cache(len(prompts), P + 6)
    logits = model.forward_cached(idx, cache, valid)
    seqs = [list(p) for p in prompts]
    for step in range(6):
        for row, seq in enumerate(seqs):
            torch.testing.assert_close(logits[row], model(torch.tensor([seq])).logits[0, -1],
                                       rtol=1e-6, atol=1e-6)
        nxt = [[(7 * step + 3 * row) % VOCAB] for row in range(len(prompts))]
        for seq, t in zip(seqs, nxt):
            seq.extend(t)
        logits = model.forward_cached(torch.tensor(nxt), cache)


@pytest.mark.parametrize("canon", ["", "A", "AC", "ABCD"])
def test_greedy_decode_with_canon_equals_full_recomputation(canon: str) -> None:
    model = canon_model(canon)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (9, 3, 14, 1, 6)]
    expected = []
    for prompt in prompts:
        seq = list(prompt)
        for _ in range(10):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1, :VOCAB].argmax()))
        expected.append(seq[len(prompt):])
    assert len({tuple(e) for e in expected}) > 1
    for bs in (2, 8):
        assert greedy_decode(model, prompts, max_new_tokens=10, stop_ids=[], pad_id=0, batch_size=bs) == expected


def test_cached_decoding_with_canon_under_bf16_autocast() -> None:
    """bf16: logits within bf16 tolerance of the fp32 full forward, same greedy tokens."""
    model = canon_model("ABCD", dtype=torch.float32)
    prompts = [[5, 6, 7, 8, 9], [12, 13]]
    ref = greedy_decode(model, prompts, max_new_tokens=6, stop_ids=[], pad_id=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = greedy_decode(model, prompts, max_new_tokens=6, stop_ids=[], pad_id=0)
        cache = model.new_kv_cache(1, 8, dtype=torch.bfloat16)
        last = model.forward_cached(torch.tensor([prompts[0]]), cache)
    full = model(torch.tensor([prompts[0]])).logits[0, -1]
    assert (last[0] - full).abs().max() <= 0.05 * full.abs().max()
    agree = sum(a == b for g_, r in zip(got, ref) for a, b in zip(g_, r)) / sum(map(len, ref))
    assert agree >= 0.9


def decode_step_aten_ops(canon: str) -> int:
    """aten ops of one cached one-token decoding step (nested ones included, as the profiler
    counts them: a convolution's internal copies and reshapes show there)."""
    model = canon_model(canon, dtype=torch.float32)
    cache = model.new_kv_cache(3, 16)
    with torch.no_grad():
        model.forward_cached(torch.tensor([[5, 6, 7], [8, 9, 10], [1, 2, 3]]), cache)
        model.forward_cached(torch.tensor([[4], [5], [6]]), cache)
        with torch.profiler.profile() as prof:
            model.forward_cached(torch.tensor([[7], [8], [9]]), cache)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def test_a_canon_decoding_step_costs_a_few_ops_per_layer() -> None:
    """Issue 28: a decoding step of a Canon layer is one cat, a multiply and a sum over the k
    taps, the state's roll and the residual add (~20 aten ops); the convolution over the cat it
    replaced took 34 (cat, transposes, conv1d and its reshapes, cat, slice, copy)."""
    per_layer = (decode_step_aten_ops("ABCD") - decode_step_aten_ops("")) / (2 * 4)  # 2 layers x 4 Canon
    assert per_layer <= 24
    assert decode_step_aten_ops("A") - decode_step_aten_ops("") <= 2 * 24


def test_canon_kernel_one_is_a_per_channel_scale() -> None:
    model = canon_model("ABCD", canon_kernel=1)
    prompts = [[5, 6, 7], [8]]
    out = greedy_decode(model, prompts, max_new_tokens=4, stop_ids=[], pad_id=0)
    seq = list(prompts[0])
    for _ in range(4):
        seq.append(int(model(torch.tensor([seq])).logits[0, -1, :VOCAB].argmax()))
    assert out[0] == seq[3:]


# -- partial RoPE and NoPE ---------------------------------------------------------------------

def test_partial_rope_rotates_only_the_first_rope_dim_dims() -> None:
    x = torch.randn(2, 3, 10, 16, dtype=torch.float64)
    cos, sin = build_rope_cache(10, 4)  # r = 4 of 16 dims
    y = apply_rope(x, cos, sin)
    assert torch.equal(y[..., 4:], x[..., 4:])
    torch.testing.assert_close(y[..., :4], apply_rope(x[..., :4], cos, sin))
    empty = build_rope_cache(10, 0)
    assert torch.equal(apply_rope(x, *empty), x)  # NoPE


@pytest.mark.parametrize("rope_dim", [0, 4, 8])
def test_partial_rope_scores_depend_only_on_relative_position(rope_dim: int) -> None:
    model = canon_model("", rope_dim=rope_dim)
    assert model.rope_cos.shape == (128, rope_dim // 2)
    idx = torch.randint(1, VOCAB, (1, 9), generator=torch.Generator().manual_seed(2))
    # the same prompt behind left padding (cached path) gives the same logits: only relative
    # positions matter (with NoPE, no positions at all)
    cache = model.new_kv_cache(1, 16)
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), idx], 1)
    valid = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 9, dtype=torch.bool)], 1)
    torch.testing.assert_close(model.forward_cached(padded, cache, valid)[0],
                               model(idx).logits[0, -1], rtol=1e-6, atol=1e-6)


def test_nope_attention_ignores_positions() -> None:
    """rope_dim=0: permuting earlier tokens leaves a one-layer model's last logits unchanged."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, rope_dim=0), VOCAB).double().eval()
    a = torch.tensor([[3, 9, 4, 7, 2]])
    b = torch.tensor([[4, 3, 7, 9, 2]])
    torch.testing.assert_close(model(a).logits[0, -1], model(b).logits[0, -1])
    rope = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16), VOCAB).double().eval()
    assert not torch.allclose(rope(a).logits[0, -1], rope(b).logits[0, -1])


# -- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize("override, words", [
    ("model.canon=AX", ["model.canon='AX'", "ABCD"]),
    ("model.canon=AA", ["model.canon='AA'", "distinct"]),
    ("model.canon_kernel=0", ["model.canon_kernel=0", ">= 1"]),
    ("model.rope_dim=7", ["model.rope_dim=7", "even", "0..32"]),
    ("model.rope_dim=64", ["model.rope_dim=64", "0..32"]),
])
def test_bad_canon_and_rope_values_are_one_line_errors(override: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, [override])
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_canon_and_rope_dim_load_from_the_command_line() -> None:
    cfg = load_config(TrainConfig, ["model.canon=ABCD", "model.rope_dim=8", "model.canon_kernel=3"])
    assert (cfg.model.canon, cfg.model.rope_dim, cfg.model.canon_kernel) == ("ABCD", 8, 3)
    default = load_config(TrainConfig, [])
    assert default.model.canon == "" and default.model.rope_dim is None  # the paper's model by default


def test_conv1d_and_shift_agree_in_value_and_gradient() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 9, 8, dtype=torch.float64, requires_grad=True)
    grads = []
    for conv in (causal_conv_shift, causal_conv_conv1d):
        y = conv(x, w)
        (y * torch.arange(9.0, dtype=torch.float64)[None, :, None]).sum().backward()
        grads.append((y.detach(), x.grad.clone(), w.grad.clone()))
        x.grad = w.grad = None
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


# -- every other path: resume, compile, V-probe, print_config ------------------------------------

LEVERS = ["model.canon=ABCD", "model.canon_kernel=3", "model.rope_dim=8"]


@pytest.mark.slow
def test_a_canon_run_resumes_bit_exactly(tmp_path) -> None:
    import train
    from test_train import FAST, LossRecorder, StopAt

    common = FAST + LEVERS + [f"log_root={tmp_path}", "eval.final=false", "optim.lr=1e-2", "optim.warmup_steps=2",
                              "trainer.checkpoint_every=3", "trainer.max_steps=6"]
    straight, first, second = LossRecorder(), LossRecorder(), LossRecorder()
    assert train.main(common + ["name=straight"], extra_callbacks=[straight]) == 0
    assert train.main(common + ["name=resumed"], extra_callbacks=[first, StopAt(3)]) == 0
    assert train.main(common + ["name=resumed", "ckpt_path=last"], extra_callbacks=[second]) == 0
    assert len(straight.losses) == 6 and len(set(straight.losses)) > 3
    assert first.losses + second.losses == straight.losses  # bit-identical on CPU


def test_compiled_canon_forward_equals_eager(monkeypatch) -> None:
    """Under torch.compile the shifted multiply-adds replace conv1d (igsm.model.canon_conv): same
    values, same checkpoint keys."""
    from igsm import model as model_module

    used = []
    real = model_module.causal_conv_shift
    monkeypatch.setattr(model_module, "causal_conv_shift", lambda *a: used.append(1) or real(*a))
    model = canon_model("ABCD", dtype=torch.float32)
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(model.forward, backend="eager")  # dynamo's tracing without a C++ toolchain
    torch.testing.assert_close(compiled(idx).logits, model(idx).logits, rtol=1e-5, atol=1e-5)
    assert used  # the compiled graph ran the shift implementation
    used.clear()
    model(idx)
    assert not used  # eager: conv1d


def test_probe_py_on_a_canon_partial_rope_checkpoint(tmp_path) -> None:
    """The V-probe (hidden states, rank-r embedding update, frozen backbone) on a Canon model."""
    import json

    import probe
    import train

    assert train.main([f"log_root={tmp_path}", "name=c", "model.n_layer=2", "model.n_head=2", *LEVERS,
                       "trainer.max_steps=2", "eval.final=false", "data.batch_size=2", "data.num_workers=0",
                       "trainer.enable_progress_bar=false", "trainer.devices=1", "trainer.strategy=auto"]) == 0
    ckpt = tmp_path / "c" / "version_0" / "checkpoints" / "last.ckpt"
    assert any("canon_b" in k for k in torch.load(ckpt, weights_only=False)["state_dict"])
    assert probe.main([f"ckpt={ckpt}", f"log_root={tmp_path}", "name=p", "probe.tasks=[nece,can_next]",
                       "trainer.max_steps=2", "probe.test_problems=4", "probe.batch_size=6", "probe.draws=3",
                       "trainer.enable_progress_bar=false", "trainer.devices=1", "trainer.strategy=auto",
                       "probe.num_workers=0", "trainer.log_every_n_steps=1"]) == 0
    result = json.loads((tmp_path / "p" / "version_0" / "probe.json").read_text())
    assert set(result["tasks"]) == {"nece", "can_next"}
    assert all(0 <= e["acc"] <= 1 for e in result["tasks"].values())


def test_print_config_lists_the_new_model_keys(capsys) -> None:
    import train

    assert train.main(["print_config=true", *LEVERS]) == 0
    out = capsys.readouterr().out
    assert "canon: ABCD" in out and "canon_kernel: 3" in out and "rope_dim: 8" in out
