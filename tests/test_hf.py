"""Hugging Face interop (igsm.hf, docs/interop.md): export to a transformers GPT-NeoX folder (or,
for Canon models, a folder with igsm's own modeling code), the numbers and tokens it reproduces,
the way back, probing an exported folder, Parquet datasets.

Tests that need the extra [hf] skip without it; the "which extra" messages are tested always.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

import probe
from conftest import draw_problems
from igsm import cli
from igsm.config import ModelConfig
from igsm.decode import greedy_decode
from igsm.model import GPT
from igsm.tokenizer import build_tokenizer
from igsm.world import SHIPPED_WORLDS

PROBE_FAST = ["trainer.max_steps=2", "probe.test_problems=4", "probe.batch_size=6", "probe.draws=3",
              "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "probe.tasks=[nece]",
              "trainer.devices=1", "trainer.strategy=auto",
              "probe.control=none"]


def assert_same_weights(model, back) -> None:
    """``back`` (read from an exported folder) holds ``model``'s weights bit for bit, embedding tied."""
    theirs = back.state_dict()
    assert set(theirs) == set(model.state_dict())
    for name, t in model.state_dict().items():
        assert torch.equal(t, theirs[name]), name
    assert back.lm_head.weight is back.wte.weight


def _need_hf():
    for module in ("transformers", "safetensors", "tokenizers"):
        pytest.importorskip(module)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Nothing may come from the network: loading must work from the folder alone."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _tokenizer(name: str):
    return build_tokenizer(name, SHIPPED_WORLDS["tiny"] if name == "word" else None)


@pytest.fixture(scope="module", params=["word", "gpt2"])
def exported(request, tmp_path_factory):
    """A small random GPT per tokenizer, exported: (our model, our tokenizer, folder)."""
    _need_hf()
    from igsm import hf

    tok = build_tokenizer(request.param, None)  # the full world: names of every preset
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=512), tok.vocab_size).eval()
    folder = hf.export_model(model, tok, tmp_path_factory.mktemp(f"hf_{request.param}"))
    return model, tok, folder


def _hf_load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval(),
            AutoTokenizer.from_pretrained(folder, local_files_only=True))


def test_export_folder_loads_offline_and_logits_match(exported):
    model, tok, folder = exported
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "igsm.json", "README.md"} <= {p.name for p in folder.iterdir()}
    hf_model, _ = _hf_load(folder)
    assert type(hf_model).__name__ == "GPTNeoXForCausalLM"
    seqs = [tok.encode_example(p.problem_text, p.solution, p.answer) for p in draw_problems("med", 3, 0, "test")]
    T = min(len(s) for s in seqs)
    idx = torch.tensor([s[:T] for s in seqs])  # [3, T] real problems
    with torch.no_grad():
        ours = model(idx).logits  # [3, T, padded_vocab]
        theirs = hf_model(idx).logits
    assert theirs.shape == ours.shape
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("n_embd, rope_dim", [(32, 4), (32, 0), (52, 6)])  # a quarter, NoPE, 6 of 26 dims
def test_partial_rope_exports_as_rotary_pct_with_equal_logits(tmp_path, n_embd, rope_dim):
    _need_hf()
    from igsm import hf

    tok = _tokenizer("word")
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=n_embd, block_size=128, rope_dim=rope_dim),
                tok.vocab_size).eval()
    folder = hf.export_model(model, tok, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    head = n_embd // 2
    assert int(head * config["rotary_pct"]) == rope_dim
    assert int(head * config["rope_parameters"]["partial_rotary_factor"]) == rope_dim
    hf_model, _ = _hf_load(folder)
    idx = torch.randint(0, tok.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(idx).logits - hf_model(idx).logits).abs().max().item() <= 1e-4
    back = hf.load_pretrained(folder).model
    assert back.cfg.rope_dim == rope_dim
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))


def test_generate_reproduces_greedy_decode(exported):
    model, tok, folder = exported
    hf_model, _ = _hf_load(folder)
    prompts = [tok.encode_prompt(p.problem_text) for p in draw_problems("med", 3, 1, "test")]
    ours = greedy_decode(model, prompts, max_new_tokens=20, stop_ids=[tok.eos_id], pad_id=tok.pad_id)
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), tok.pad_id)  # [B, P], left-padded as transformers expects
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, P - len(p):], mask[row, P - len(p):] = torch.tensor(p), 1
    out = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20)  # greedy by its config
    theirs = []
    for row in out[:, P:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t == tok.eos_id), len(row))
        theirs.append(row[:cut])
    assert theirs == ours


def test_fresh_letters_processor_masks_letters_defined_in_the_generation():
    _need_hf()
    from igsm.hf import fresh_letters_processor

    tok = _tokenizer("word")
    define, letters = tok.letter_slot_ids()
    a, b, c = letters[:3]
    word = tok.encode(" x")[0]
    prompt = [tok.eos_id, define, b]  # a letter "defined" in the prompt does not count
    proc = fresh_letters_processor(tok, prompt_len=len(prompt))
    scores = torch.zeros(2, tok.vocab_size)  # [B, V]
    ids = torch.tensor([prompt + [word, define, a, word, define],   # a was defined: masked now
                        prompt + [word, define, a, word, word]])    # not after " as": untouched
    out = proc(ids, scores.clone())
    assert out[0, a] == float("-inf") and out[0, b] == 0 and out[0, c] == 0
    assert torch.equal(out[1], scores[1])


def test_tokenizer_encodes_and_decodes_problems_identically(exported):
    _, tok, folder = exported
    _, hf_tok = _hf_load(folder)
    problems = draw_problems("med", 8, 2, "test") + draw_problems("tiny", 4, 3, "test")
    for p in problems:
        ids = tok.encode_example(p.problem_text, p.solution, p.answer)
        assert hf_tok.decode(ids) == tok.decode(ids)  # specials (and GPT-2's marker bytes) included
        assert hf_tok.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_specials=True)
        for part in (p.problem_text, p.solution, str(p.answer)):
            text = " " + part if tok.name == "gpt2" else part  # how encode_example encodes a part
            assert hf_tok(text)["input_ids"] == tok.encode(text)
        if tok.name == "word":  # the whole example from its text: every special is one token
            assert hf_tok(tok.decode(ids))["input_ids"] == ids
    specials = {"word": ["[PAD]", "[UNK]", "[EOS]", "[PROBLEM]", "[SOLUTION]", "[ANSWER]", "[START]", "[MID]", "[END]"],
                "gpt2": ["<|endoftext|>", "[START]", "[MID]", "[END]"]}[tok.name]
    for s in specials:
        (i,) = hf_tok(s)["input_ids"]
        assert tok.decode([i]) == s
    assert hf_tok.convert_tokens_to_ids(["[START]", "[MID]", "[END]"]) == [tok.start_id, tok.mid_id, tok.end_id]
    assert (hf_tok.eos_token_id, hf_tok.pad_token_id) == (tok.eos_id, tok.pad_id)
    assert hf_tok("[START] x [MID]")["input_ids"] == [tok.start_id] + tok.encode(" x ") + [tok.mid_id]


def test_word_tokenizer_out_of_vocabulary_text_falls_back_alike():
    _need_hf()
    from igsm.hf import hf_tokenizer

    tok = _tokenizer("word")
    hf_tok = hf_tokenizer(tok)
    for text in ["Zyxwv qqq 123 + 456 = 579.", "a  b\n\tc", "héllo wörld ✓", " Define x as 23; so 99."]:
        assert hf_tok(text)["input_ids"] == tok.encode(text), text
        assert hf_tok.decode(tok.encode(text)) == tok.decode(tok.encode(text))


def test_round_trip_is_bit_identical(exported, tmp_path):
    from igsm import hf

    model, tok, folder = exported
    back = hf.load_pretrained(folder)
    assert back.tokenizer.to_dict() == tok.to_dict()
    assert_same_weights(model, back.model)
    again = hf.export_model(back.model, back.tokenizer, tmp_path / "again")
    assert hf.load_pretrained(again).model.state_dict().keys() == model.state_dict().keys()


def test_round_trip_without_biases(tmp_path):
    _need_hf()
    from igsm import hf

    tok = _tokenizer("word")
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, bias=False), tok.vocab_size)
    back = hf.load_pretrained(hf.export_model(model, tok, tmp_path / "nobias")).model
    assert not back.cfg.bias
    for name, t in model.state_dict().items():
        assert torch.equal(t, back.state_dict()[name]), name


def test_folder_without_igsm_json_loads_as_gpt2(tmp_path):
    """A GPT-NeoX trained elsewhere with GPT-2's tokenizer: default (med, gpt2) training config."""
    _need_hf()
    from igsm import hf

    tok = _tokenizer("gpt2")
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64), tok.vocab_size)
    folder = hf.export_model(model, tok, tmp_path / "foreign")
    (folder / "igsm.json").unlink()
    back = hf.load_pretrained(folder)
    assert back.tokenizer.name == "gpt2" and back.train_config.data.tokenizer == "gpt2"
    assert back.train_config.model.n_layer == 1 and back.train_config.model.block_size == 64
    assert all(torch.equal(t, back.model.state_dict()[k]) for k, t in model.state_dict().items())


@pytest.mark.parametrize("key,value", [("use_parallel_residual", True), ("rotary_pct", 0.3125),
                                       ("model_type", "llama")])
def test_unsupported_config_is_one_clear_error(tmp_path, key, value):
    _need_hf()
    from igsm import hf

    tok = _tokenizer("word")
    folder = hf.export_model(GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64), tok.vocab_size), tok,
                             tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg[key] = value
    if key == "rotary_pct":
        del cfg["rope_parameters"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(hf.InteropError, match=key.split("_")[0]):
        hf.load_pretrained(folder)


# ----------------------------------------------------------------------------------------------
# Canon models: exported with igsm's own modeling code (igsm/hf_remote), trust_remote_code=True
# ----------------------------------------------------------------------------------------------

CANON_SUBSETS = ["".join(c for i, c in enumerate("ABCD") if m >> i & 1) for m in range(16)]


def _canon_model(canon: str, *, rope_dim=None, kernel: int = 4, n_embd: int = 32, seed: int = 0,
                 vocab_size: int = 0) -> GPT:
    """A small random GPT whose weights are large enough that every Canon layer and every token
    matters (default init: near-uniform logits, greedy repeats one token)."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=n_embd, block_size=256, canon=canon, canon_kernel=kernel,
                            rope_dim=rope_dim), vocab_size or _tokenizer("word").vocab_size).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" not in name:
                p.normal_(0.0, 0.5 if "canon" in name else 0.3)
    return model


def _hf_load_remote(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, local_files_only=True).eval()


def _left_padded(prompts, pad_id):
    """ids and attention_mask [B, P] for prompts left-padded to the longest, as generate expects."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, P - len(p):], mask[row, P - len(p):] = torch.tensor(p), 1
    return ids, mask


@pytest.mark.parametrize("canon", CANON_SUBSETS)
def test_every_canon_subset_exports_with_equal_logits(tmp_path, canon):
    """All 16 subsets of ABCD ("" is the plain GPT-NeoX export), with kernels 1-4 and rope_dim
    16 (all), 4, 0 (NoPE) and 8 of the 16 head dims cycling through them."""
    _need_hf()
    from igsm import hf

    i = CANON_SUBSETS.index(canon)
    rope_dim, kernel = [None, 4, 0, 8][i % 4], [4, 1, 2, 3][i // 4]
    tok = _tokenizer("word")
    model = _canon_model(canon, rope_dim=rope_dim, kernel=kernel, seed=i)
    folder = hf.export_model(model, tok, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == ("igsm" if canon else "gpt_neox")
    assert ("auto_map" in config) == (folder / "modeling_igsm.py").is_file() == bool(canon)  # plain: no code
    hf_model = _hf_load_remote(folder)
    idx = torch.randint(0, tok.vocab_size, (2, 48), generator=torch.Generator().manual_seed(i))
    with torch.no_grad():
        ours, theirs = model(idx).logits, hf_model(idx).logits
    assert theirs.shape == ours.shape
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("n_embd, rope_dim", [(32, None), (32, 4), (32, 0), (52, 6)])  # all, a quarter, NoPE, 6 of 26
def test_canon_export_rope_dim_logits_and_bit_identical_round_trip(tmp_path, n_embd, rope_dim):
    _need_hf()
    from igsm import hf

    tok = _tokenizer("word")
    model = _canon_model("ABCD", rope_dim=rope_dim, n_embd=n_embd, kernel=3)
    folder = hf.export_model(model, tok, tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["rotary_dim"] == model.cfg.rotary_dim
    hf_model = _hf_load_remote(folder)
    idx = torch.randint(0, tok.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(idx).logits - hf_model(idx).logits).abs().max().item() <= 1e-4
    back = hf.load_pretrained(folder)
    assert (back.model.cfg.canon, back.model.cfg.canon_kernel, back.model.cfg.rope_dim) == ("ABCD", 3, rope_dim)
    assert back.tokenizer.to_dict() == tok.to_dict()
    assert_same_weights(model, back.model)


def test_canon_round_trip_without_biases(tmp_path):
    _need_hf()
    from igsm import hf

    tok = _tokenizer("word")
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, bias=False, canon="BD"), tok.vocab_size)
    folder = hf.export_model(model, tok, tmp_path / "m")
    idx = torch.randint(0, tok.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(idx).logits - _hf_load_remote(folder)(idx).logits).abs().max().item() <= 1e-4
    back = hf.load_pretrained(folder).model
    assert not back.cfg.bias
    assert all(torch.equal(t, back.state_dict()[k]) for k, t in model.state_dict().items())


def test_canon_left_padding_reads_as_the_start_of_the_sequence(tmp_path):
    """A left-padded row's logits equal the unpadded row's: padded keys are masked out of
    attention and padded positions enter the Canon convolutions as zeros."""
    _need_hf()
    from igsm import hf

    tok = _tokenizer("word")
    model = _canon_model("ABCD", rope_dim=4)
    hf_model = _hf_load_remote(hf.export_model(model, tok, tmp_path / "m"))
    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(3, tok.vocab_size, (n,), generator=g).tolist() for n in (30, 21, 9)]
    ids, mask = _left_padded(rows, tok.pad_id)
    with torch.no_grad():
        padded = hf_model(input_ids=ids, attention_mask=mask).logits  # [3, 30, V]
        for r, row in enumerate(rows):
            alone = model(torch.tensor([row])).logits[0]  # [n, V]
            assert (padded[r, ids.shape[1] - len(row):] - alone).abs().max().item() <= 1e-4


def test_canon_generate_reproduces_greedy_decode_with_a_kv_cache(tmp_path):
    """Batched, left-padded greedy generate equals igsm's greedy_decode token for token; after the
    prompt each step feeds one token (the cache carries keys, values and the Canon states), and
    generating without the cache (recomputing every step) gives the same tokens."""
    _need_hf()
    from igsm import hf

    tok = _tokenizer("word")
    model = _canon_model("ABCD", rope_dim=4)
    hf_model = _hf_load_remote(hf.export_model(model, tok, tmp_path / "m"))
    prompts = [tok.encode_prompt(p.problem_text) for p in draw_problems("tiny", 3, 1, "test")]
    ours = greedy_decode(model, prompts, max_new_tokens=20, stop_ids=[tok.eos_id], pad_id=tok.pad_id)
    assert len({t for row in ours for t in row}) > 10  # a model whose tokens depend on the context
    ids, mask = _left_padded(prompts, tok.pad_id)
    fed = []
    hook = hf_model.register_forward_pre_hook(lambda mod, args, kw: fed.append(kw["input_ids"].shape[1]),
                                              with_kwargs=True)
    out = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20)  # greedy by its config
    hook.remove()
    assert fed[0] == ids.shape[1] and set(fed[1:]) == {1}  # the prompt, then one token per step
    theirs = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t == tok.eos_id), len(row))
        theirs.append(row[:cut])
    assert theirs == ours
    recomputed = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, use_cache=False)
    assert torch.equal(recomputed, out)


def test_canon_beam_search_cache_follows_the_beams(tmp_path):
    """Beam search reorders the cache every step; the Canon states must follow their beams."""
    _need_hf()
    from igsm import hf

    tok = _tokenizer("word")
    model = _canon_model("ABCD", kernel=4, seed=1)  # its beams swap places at most steps
    hf_model = _hf_load_remote(hf.export_model(model, tok, tmp_path / "m"))
    prompts = [tok.encode_prompt(p.problem_text) for p in draw_problems("tiny", 2, 4, "test")]
    ids, mask = _left_padded(prompts, tok.pad_id)
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, num_beams=3)
    assert torch.equal(hf_model.generate(**kw), hf_model.generate(**kw, use_cache=False))


def test_canon_hidden_states_are_igsms(tmp_path):
    """output_hidden_states: the embedding output and the residual stream after each block, the
    last one after the final LayerNorm (transformers' convention; igsm's is before it)."""
    _need_hf()
    from igsm import hf

    tok = _tokenizer("word")
    model = _canon_model("AC", rope_dim=0)
    hf_model = _hf_load_remote(hf.export_model(model, tok, tmp_path / "m"))
    idx = torch.randint(0, tok.vocab_size, (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model(idx, output_hidden_states=True).hidden_states
        theirs = hf_model(idx, output_hidden_states=True).hidden_states
        assert len(theirs) == len(ours) == model.cfg.n_layer + 1
        for a, b in zip(ours[:-1], theirs[:-1]):
            assert (a - b).abs().max().item() <= 1e-5
        assert (model.ln_f(ours[-1]) - theirs[-1]).abs().max().item() <= 1e-5


def test_canon_hidden_states_through_nnsight(tmp_path):
    """docs/interop.md: nnsight opens the folder and saves each block's output (the residual
    stream igsm's probes read) and a Canon layer's output."""
    _need_hf()
    nnsight = pytest.importorskip("nnsight")
    from igsm import hf

    tok = _tokenizer("word")
    model = _canon_model("ABCD", rope_dim=4)
    folder = hf.export_model(model, tok, tmp_path / "m")
    # nnsight >= 0.8 opens folders through a transformers pipeline (TransformersModel); older
    # versions with LanguageModel. Offline: the _offline fixture sets HF_HUB_OFFLINE=1.
    if hasattr(nnsight, "TransformersModel"):
        lm = nnsight.TransformersModel(str(folder), task="text-generation", trust_remote_code=True, dispatch=True)
    else:
        lm = nnsight.LanguageModel(str(folder), trust_remote_code=True, dispatch=True)
    idx = torch.randint(0, tok.vocab_size, (1, 24), generator=torch.Generator().manual_seed(6))
    with lm.trace(idx):  # modules in the order they run (nnsight refuses to go back)
        canon_a = lm.transformer.blocks[0].canon_a.output.save()
        block_1 = lm.transformer.blocks[0].output.save()  # the residual stream after block 1
        block_2 = lm.transformer.blocks[1].output.save()
    with torch.no_grad():
        ours = model(idx, output_hidden_states=True).hidden_states
        expected_a = model.blocks[0].canon_a(model.blocks[0].ln_1(ours[0]))
    for layer, saved in enumerate((block_1, block_2), start=1):
        assert (saved - ours[layer]).abs().max().item() <= 1e-5
    assert (canon_a - expected_a).abs().max().item() <= 1e-5


def test_canon_folder_code_imports_only_torch_and_transformers(tmp_path):
    """The modeling code in the folder needs no igsm (the slow test below runs it without)."""
    _need_hf()
    import ast

    from igsm import hf

    folder = hf.export_model(_canon_model("A"), _tokenizer("word"), tmp_path / "m")
    roots = set()
    for name in ("modeling_igsm.py", "configuration_igsm.py"):
        for node in ast.walk(ast.parse((folder / name).read_text())):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots.add("." if node.level else node.module.split(".")[0])
    assert roots <= {"__future__", "typing", "torch", "transformers", "."}, roots
    assert json.loads((folder / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_igsm.IgsmConfig", "AutoModelForCausalLM": "modeling_igsm.IgsmForCausalLM"}


@pytest.mark.slow  # a fresh interpreter imports torch and transformers: ~20 s on 2 busy cores
def test_canon_folder_runs_without_igsm(tmp_path):
    """The folder is self-contained: in a fresh interpreter where igsm cannot be imported, the
    modeling code loads from the folder alone (nothing downloaded) and gives igsm's logits."""
    _need_hf()
    import subprocess

    from igsm import hf

    tok = _tokenizer("word")
    model = _canon_model("ABD", rope_dim=8)
    folder = hf.export_model(model, tok, tmp_path / "m")
    idx = torch.randint(0, tok.vocab_size, (1, 16), generator=torch.Generator().manual_seed(7))
    torch.save(idx, tmp_path / "idx.pt")
    script = (
        "import sys, torch; sys.modules['igsm'] = None\n"  # import igsm now fails
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True, local_files_only=True)\n"
        f"idx = torch.load({str(tmp_path / 'idx.pt')!r})\n"
        "with torch.no_grad(): torch.save(m.eval()(idx).logits, sys.argv[1])\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "logits.pt")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    with torch.no_grad():
        assert (torch.load(tmp_path / "logits.pt") - model(idx).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("key,value", [("canon", "AX"), ("rotary_dim", 5), ("tie_word_embeddings", False)])
def test_canon_unsupported_config_is_one_clear_error(tmp_path, key, value):
    _need_hf()
    from igsm import hf

    tok = _tokenizer("word")
    folder = hf.export_model(_canon_model("AC"), tok, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(hf.InteropError, match=key) as e:
        hf.load_pretrained(folder)
    assert "\n" not in str(e.value)


def test_canon_weights_that_do_not_match_the_config_are_one_error(tmp_path):
    _need_hf()
    from igsm import hf

    tok = _tokenizer("word")
    folder = hf.export_model(_canon_model("AC"), tok, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["canon"] = "A"  # the folder still holds canon_c weights
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(hf.InteropError, match="unexpected.*canon_c"):
        hf.load_pretrained(folder)


# ----------------------------------------------------------------------------------------------
# The command line and probe.py on a real (2-step) train.py checkpoint
# ----------------------------------------------------------------------------------------------

def _write_train_ckpt(path: Path, overrides: list[str]) -> Path:
    """A checkpoint in train.py's format (what GPTLitModule.load_from_checkpoint reads) of an
    untrained tiny-preset model, written without training (test_probe_cli runs train.py itself)."""
    import lightning as L

    from igsm.cli_config import config_to_dict, load_config
    from igsm.config import TrainConfig
    from igsm.data_setup import build_data_tokenizer
    from igsm.lit import GPTLitModule

    cfg = load_config(TrainConfig, ["model.n_layer=2", "model.n_head=2", *overrides])
    torch.manual_seed(0)
    lit = GPTLitModule(config_to_dict(cfg), build_data_tokenizer(cfg.data).to_dict())
    torch.save({"state_dict": lit.state_dict(), "hyper_parameters": dict(lit.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    return path


@pytest.fixture(scope="module")
def train_ckpt(tmp_path_factory):
    _need_hf()
    return _write_train_ckpt(tmp_path_factory.mktemp("ckpt") / "last.ckpt", [])


def test_export_command_then_probe_the_folder(train_ckpt, tmp_path, capsys):
    _need_hf()
    from igsm import hf
    from igsm.lit import GPTLitModule

    out = tmp_path / "export"
    assert cli.main(["export", str(train_ckpt), "--out", str(out)]) == 0
    assert "AutoModelForCausalLM" in capsys.readouterr().out
    lit = GPTLitModule.load_from_checkpoint(str(train_ckpt), map_location="cpu", weights_only=False)
    back = hf.load_pretrained(out).model
    assert all(torch.equal(t, back.state_dict()[k]) for k, t in lit.model.state_dict().items())
    hf_model, hf_tok = _hf_load(out)
    p = draw_problems("tiny", 1, 0, "test")[0]
    text = lit.tokenizer.decode(lit.tokenizer.encode_example(p.problem_text, p.solution, p.answer))
    idx = torch.tensor([hf_tok(text)["input_ids"]])
    with torch.no_grad():
        assert (hf_model(idx).logits - lit.model(idx).logits).abs().max().item() <= 1e-4
    # probe.py reads the folder like a checkpoint: same model, tokenizer and training data
    rc = probe.main([f"ckpt={out}", f"log_root={tmp_path}", "name=p", *PROBE_FAST])
    assert rc == 0
    res = json.loads((tmp_path / "p" / "version_0" / "probe.json").read_text())
    assert res["backbone_ckpt"] == str(out) and res["backbone"]["n_layer"] == 2
    assert res["tasks"]["nece"]["n_test_pairs"] > 0


def test_export_command_writes_a_canon_model_then_probe_reads_it(tmp_path, capsys):
    """python -m igsm export on a Canon checkpoint (it used to refuse in one line): the folder
    loads with trust_remote_code and gives the checkpoint's logits; probe.py ckpt=DIR reads it."""
    _need_hf()
    from igsm import hf
    from igsm.lit import GPTLitModule

    ckpt = _write_train_ckpt(tmp_path / "canon.ckpt", ["model.canon=ABCD", "model.rope_dim=16", "model.canon_kernel=3"])
    out = tmp_path / "export"
    assert cli.main(["export", str(ckpt), "--out", str(out)]) == 0
    assert "trust_remote_code=True" in capsys.readouterr().out
    lit = GPTLitModule.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=False)
    back = hf.load_pretrained(out).model
    assert (back.cfg.canon, back.cfg.rope_dim, back.cfg.canon_kernel) == ("ABCD", 16, 3)
    assert all(torch.equal(t, back.state_dict()[k]) for k, t in lit.model.state_dict().items())
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True, local_files_only=True)
    p = draw_problems("tiny", 1, 0, "test")[0]
    idx = torch.tensor([hf_tok(lit.tokenizer.decode(lit.tokenizer.encode_example(p.problem_text, p.solution,
                                                                                 p.answer)))["input_ids"]])
    assert idx[0].tolist() == lit.tokenizer.encode_example(p.problem_text, p.solution, p.answer)
    with torch.no_grad():
        assert (_hf_load_remote(out)(idx).logits - lit.model(idx).logits).abs().max().item() <= 1e-4
    rc = probe.main([f"ckpt={out}", f"log_root={tmp_path}", "name=p", *PROBE_FAST])
    assert rc == 0
    res = json.loads((tmp_path / "p" / "version_0" / "probe.json").read_text())
    assert res["backbone_ckpt"] == str(out) and res["backbone"]["n_layer"] == 2
    assert res["tasks"]["nece"]["n_test_pairs"] > 0


def test_export_and_probe_errors_are_one_line(tmp_path, capsys):
    _need_hf()
    assert cli.main(["export", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CKPT") and err.count("\n") == 1
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    assert cli.main(["export", str(tmp_path / "junk.ckpt"), "--out", str(tmp_path / "o")]) == 2
    assert "not a readable train.py checkpoint" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert probe.main([f"ckpt={tmp_path / 'folder'}", f"log_root={tmp_path}"]) == 2
    assert "model_type='gpt2' is not supported" in capsys.readouterr().err


def test_missing_extra_names_it(monkeypatch, tmp_path, capsys):
    """Without the extra the commands say what to install (runs without the extra too)."""
    from igsm import hf

    for module in ("transformers", "pyarrow"):
        monkeypatch.setitem(sys.modules, module, None)  # import now fails as if not installed
    with pytest.raises(hf.MissingExtraError, match=r'\.\[hf\]'):
        hf.require("transformers")
    assert cli.main(["export", "x.ckpt", "--out", str(tmp_path / "o")]) == 2
    assert '".[hf]"' in capsys.readouterr().err
    assert cli.main(["generate", "--preset", "tiny", "--n", "2", "--out", str(tmp_path / "d.parquet")]) == 2
    err = capsys.readouterr().err
    assert "pyarrow" in err and '".[hf]"' in err


# ----------------------------------------------------------------------------------------------
# Parquet
# ----------------------------------------------------------------------------------------------

def test_parquet_holds_the_jsonl_records(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    datasets = pytest.importorskip("datasets")
    args = ["generate", "--preset", "tiny", "--n", "200", "--op", "2", "--seed", "5"]
    assert cli.main(args + ["--out", str(tmp_path / "d.jsonl")]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "d.parquet")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "d.parquet"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert ds.column_names == list(rows[0])
    assert [{**r, "graph": json.loads(r["graph"])} for r in ds] == rows  # graph: a JSON string
    capsys.readouterr()
    for cmd in ("verify", "stats"):
        outputs = []
        for name in ("d.jsonl", "d.parquet"):
            assert cli.main([cmd, "--in", str(tmp_path / name)]) == 0
            outputs.append(capsys.readouterr().out)
        assert outputs[0] == outputs[1]


def test_parquet_verify_reports_and_errors(tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    assert cli.main(["generate", "--preset", "tiny", "--n", "3", "--out", str(tmp_path / "d.parquet")]) == 0
    table = pq.read_table(tmp_path / "d.parquet")
    solutions = table.column("solution").to_pylist()
    solutions[0] = solutions[0].replace("=", "+", 1)
    pq.write_table(table.set_column(table.schema.get_field_index("solution"), "solution", pa.array(solutions)),
                   tmp_path / "bad.parquet")
    capsys.readouterr()
    assert cli.main(["verify", "--in", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "r.jsonl")]) == 0
    assert "3 verified: 2 correct, 1 wrong" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])["correct"] is False
    (tmp_path / "junk.parquet").write_text("not parquet")
    assert cli.main(["verify", "--in", str(tmp_path / "junk.parquet")]) == 2
    assert "cannot be read as Parquet" in capsys.readouterr().err
    assert cli.main(["generate", "--preset", "tiny", "--n", "0", "--out", str(tmp_path / "empty.parquet")]) == 0
    assert cli.main(["verify", "--in", str(tmp_path / "empty.parquet")]) == 0
    assert "0 verified" in capsys.readouterr().out
