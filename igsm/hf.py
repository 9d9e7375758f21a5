"""Hugging Face interop: igsm models to transformers folders and back (docs/interop.md).

``python -m igsm export CKPT --out DIR`` writes a folder that loads offline with
``AutoModelForCausalLM.from_pretrained(DIR, local_files_only=True)`` and ``AutoTokenizer.from_pretrained(DIR, ...)``
(both with ``trust_remote_code=True`` for a model with Canon layers, see below);
:func:`load_pretrained` (and ``probe.py ckpt=DIR``) reads it back into igsm's GPT.

Why GPT-NeoX: it is the transformers architecture that *is* our GPT. Pre-LayerNorm blocks with a
sequential residual (``use_parallel_residual=False``), exact-erf GELU MLP of width 4d with biases,
rotary embeddings in the "rotate half" layout on the first ``model.rope_dim`` dims of each head
(``partial_rotary_factor`` = rope_dim / head_dim: 1 by default, 0 for NoPE),
no learned positions, tied input/output embeddings, biases on q/k/v and the output projection.
(GPT-2's own class has learned positions; Llama has RMSNorm, SwiGLU and no biases; GPT-J rotates
interleaved pairs.) The only rearrangement is GPT-NeoX's fused q/k/v layout: its
``query_key_value`` output is read as ``[heads, (q, k, v), head_dim]`` while ours is
``[(q, k, v), heads, head_dim]``, so the rows of that weight and bias are permuted (exactly
invertible: the round trip is bit-identical). The embedding keeps our padded vocabulary (rows past
the tokenizer's size); ``generation_config.json`` suppresses those ids, as our decoder does.

A model with Canon layers (``model.canon``) has no transformers architecture: it is exported with
its own modeling code (``igsm/hf_remote``: ``configuration_igsm.py`` and ``modeling_igsm.py``,
which import only torch and transformers), copied into the folder and named by ``auto_map`` in
config.json (``model_type: igsm``), loaded with ``trust_remote_code=True``. Its weights keep
igsm's names under ``transformer.``, so that round trip is bit-identical too.

Tokenizers become ``tokenizer.json`` files of the ``tokenizers`` library (PreTrainedTokenizerFast):

- word: the vocabulary as a BPE model with ``ignore_merges`` (a piece in the vocabulary is one
  token), whose only merges are ``" " + c -> " c"``. An unknown piece thus falls back exactly as
  :class:`igsm.tokenizer.WordTokenizer` does: ``" c"`` for its first character after a space,
  then one token per character, ``[UNK]`` for characters outside the vocabulary. The
  pre-tokenizer is the same regular expression; the decoder concatenates.
- gpt2: byte-level BPE built from the shipped ranks (the merges are recovered from the ranks),
  ``<|endoftext|>`` at 50256 and ``[START] [MID] [END]`` at 50257-50259.

The folder also holds ``igsm.json``: the tokenizer's ``to_dict()`` and the resolved training
config, so a loaded model probes and evaluates with the data it was trained on.

Everything here needs the optional extra ``pip install -e ".[hf]"``; without it the functions
raise :class:`MissingExtraError` naming the extra.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import torch
from torch import Tensor

from igsm.config import ModelConfig, TrainConfig
from igsm.model import GPT, VOCAB_MULTIPLE
from igsm.tokenizer import (
    GPT2_EOT,
    WORD_PATTERN,
    GPT2Tokenizer,
    Tokenizer,
    WordTokenizer,
    _gpt2_encoding,
    tokenizer_from_dict,
)

HF_EXTRA = 'pip install -e ".[hf]"'  # or: pip install "igsm[hf]"
IGSM_FILE = "igsm.json"  # what igsm knows beyond transformers' config.json
IGSM_FORMAT = "igsm-hf"
IGSM_FORMAT_VERSION = 1
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which igsm.model uses


class MissingExtraError(ImportError):
    """An optional dependency of the ``hf`` extra is not installed."""


class InteropError(ValueError):
    """A folder or checkpoint that cannot be converted; the message says what and why."""


def require(module: str, what: str = "Hugging Face interop") -> Any:
    """Import ``module`` or raise a one-line error naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{what} needs the package {module.split('.')[0]!r} "
                                f"of the optional extra [hf]: {HF_EXTRA}") from e


# ---------------------------------------------------------------------------------------------
# Weights: igsm state dict <-> GPT-NeoX state dict
# ---------------------------------------------------------------------------------------------

def _qkv_to_neox(w: Tensor, n_head: int) -> Tensor:
    """Rows [(q, k, v), head, head_dim] -> GPT-NeoX's [head, (q, k, v), head_dim] (weight or bias)."""
    rest = w.shape[1:]
    hd = w.shape[0] // (3 * n_head)
    return w.reshape(3, n_head, hd, *rest).transpose(0, 1).reshape(3 * n_head * hd, *rest)


def _qkv_from_neox(w: Tensor, n_head: int) -> Tensor:
    """The inverse of :func:`_qkv_to_neox`."""
    rest = w.shape[1:]
    hd = w.shape[0] // (3 * n_head)
    return w.reshape(n_head, 3, hd, *rest).transpose(0, 1).reshape(3 * n_head * hd, *rest)


# (ours, GPT-NeoX) per block; "{i}" is the block index.
_BLOCK_NAMES = (
    ("ln_1", "input_layernorm"),
    ("attn.c_attn", "attention.query_key_value"),
    ("attn.c_proj", "attention.dense"),
    ("ln_2", "post_attention_layernorm"),
    ("mlp.c_fc", "mlp.dense_h_to_4h"),
    ("mlp.c_proj", "mlp.dense_4h_to_h"),
)


def to_neox_state_dict(model: GPT) -> dict[str, Tensor]:
    """The GPT's weights under GPT-NeoX names (float32 copies; no ``lm_head``: it is tied).

    GPT-NeoX always has biases; a model built with ``bias=False`` exports zeros there.
    """
    sd = {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}
    out = {"gpt_neox.embed_in.weight": sd["wte.weight"]}
    for i in range(model.cfg.n_layer):
        for ours, theirs in _BLOCK_NAMES:
            w = sd[f"blocks.{i}.{ours}.weight"]
            b = sd.get(f"blocks.{i}.{ours}.bias", torch.zeros(w.shape[0]))
            if ours == "attn.c_attn":
                w, b = _qkv_to_neox(w, model.cfg.n_head), _qkv_to_neox(b, model.cfg.n_head)
            out[f"gpt_neox.layers.{i}.{theirs}.weight"] = w
            out[f"gpt_neox.layers.{i}.{theirs}.bias"] = b
    out["gpt_neox.final_layer_norm.weight"] = sd["ln_f.weight"]
    out["gpt_neox.final_layer_norm.bias"] = sd.get("ln_f.bias", torch.zeros_like(sd["ln_f.weight"]))
    return out


def from_neox_state_dict(neox: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """A GPT-NeoX state dict -> the state dict of ``GPT(cfg, ...)`` (inverse of to_neox_state_dict).

    With ``cfg.bias=False`` the exported zero biases are dropped (non-zero ones are an error).
    """
    def take(name: str) -> Tensor:
        if name not in neox:
            raise InteropError(f"weights: tensor {name!r} is missing")
        return neox[name]

    def bias(name: str) -> Optional[Tensor]:
        b = take(name)
        if cfg.bias:
            return b
        if torch.count_nonzero(b):
            raise InteropError(f"weights: {name} is non-zero but the model has bias=False")
        return None

    embed = neox.get("gpt_neox.embed_in.weight")
    head = neox.get("lm_head.weight", neox.get("embed_out.weight"))
    if embed is None:
        embed = head
    if embed is None:
        raise InteropError("weights: neither gpt_neox.embed_in.weight nor lm_head.weight is present")
    if head is not None and head is not embed and not torch.equal(head, embed):
        raise InteropError("weights: lm_head differs from embed_in; igsm's GPT ties them "
                           "(tie_word_embeddings must be true)")
    out = {"wte.weight": embed, "lm_head.weight": embed}  # tied: one tensor under both names
    for i in range(cfg.n_layer):
        for ours, theirs in _BLOCK_NAMES:
            w = take(f"gpt_neox.layers.{i}.{theirs}.weight")
            b = bias(f"gpt_neox.layers.{i}.{theirs}.bias")
            if ours == "attn.c_attn":
                w = _qkv_from_neox(w, cfg.n_head)
                b = None if b is None else _qkv_from_neox(b, cfg.n_head)
            out[f"blocks.{i}.{ours}.weight"] = w
            if b is not None:
                out[f"blocks.{i}.{ours}.bias"] = b
    out["ln_f.weight"] = take("gpt_neox.final_layer_norm.weight")
    b = bias("gpt_neox.final_layer_norm.bias")
    if b is not None:
        out["ln_f.bias"] = b
    return out


def rotary_fraction(cfg: ModelConfig) -> float:
    """GPT-NeoX's ``rotary_pct`` / ``partial_rotary_factor`` for ``model.rope_dim``: transformers
    rotates ``int(head_dim * fraction)`` dims, so the fraction is nudged up where r / head_dim
    rounds below r (e.g. 6 / 26)."""
    r, hd = cfg.rotary_dim, cfg.head_dim
    fraction = r / hd
    return fraction if int(hd * fraction) == r else (r + 0.5) / hd


def neox_config(model: GPT, tokenizer: Tokenizer):
    """The ``GPTNeoXConfig`` that describes ``model``."""
    transformers = require("transformers")
    cfg = model.cfg
    if cfg.canon:
        raise InteropError(f"model.canon={cfg.canon!r}: transformers' GPT-NeoX has no Canon layers "
                           "(export_model writes such a model with its own modeling code: igsm_config)")
    return transformers.GPTNeoXConfig(
        vocab_size=model.padded_vocab,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        intermediate_size=4 * cfg.d_model,
        hidden_act="gelu",  # exact erf GELU, as nn.GELU()
        max_position_embeddings=cfg.block_size,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_base),
                         "partial_rotary_factor": rotary_fraction(cfg)},
        layer_norm_eps=LAYER_NORM_EPS,
        use_parallel_residual=False,
        tie_word_embeddings=True,
        attention_bias=True,
        attention_dropout=cfg.dropout,
        hidden_dropout=cfg.dropout,
        bos_token_id=tokenizer.eos_id,  # prompts start with eos (igsm.tokenizer.Tokenizer.encode_prompt)
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )


# ---------------------------------------------------------------------------------------------
# Canon models: igsm's own transformers code (igsm/hf_remote) travels with the folder
# ---------------------------------------------------------------------------------------------

IGSM_MODEL_TYPE = "igsm"  # config.json's model_type for igsm/hf_remote's IgsmForCausalLM
IGSM_PREFIX = "transformer."  # where IgsmForCausalLM keeps igsm's GPT (lm_head is tied)
IGSM_AUTO_MAP = {"AutoConfig": "configuration_igsm.IgsmConfig",
                 "AutoModelForCausalLM": "modeling_igsm.IgsmForCausalLM"}


def to_igsm_state_dict(model: GPT) -> dict[str, Tensor]:
    """The GPT's weights under IgsmForCausalLM's names: igsm's, prefixed (float32 copies; no
    ``lm_head``: it is tied)."""
    return {IGSM_PREFIX + k: v.detach().to("cpu", torch.float32).clone()
            for k, v in model.state_dict().items() if k != "lm_head.weight"}


def from_igsm_state_dict(weights: dict[str, Tensor], cfg: ModelConfig, expected: set[str]) -> dict[str, Tensor]:
    """An IgsmForCausalLM state dict -> igsm's (inverse of to_igsm_state_dict); ``expected``: the
    names ``GPT(cfg, ...)`` has."""
    ours = {k[len(IGSM_PREFIX):]: v for k, v in weights.items() if k.startswith(IGSM_PREFIX)}
    embed = ours.get("wte.weight")
    if embed is None:
        raise InteropError(f"weights: tensor {IGSM_PREFIX}wte.weight is missing")
    head = weights.get("lm_head.weight")
    if head is not None and not torch.equal(head, embed):
        raise InteropError("weights: lm_head differs from transformer.wte; igsm's GPT ties them "
                           "(tie_word_embeddings must be true)")
    ours["lm_head.weight"] = embed  # tied: one tensor under both names
    missing, unknown = sorted(expected - set(ours)), sorted(set(ours) - expected)
    if missing or unknown:
        missing, unknown = [IGSM_PREFIX + n for n in missing[:3]], [IGSM_PREFIX + n for n in unknown[:3]]
        raise InteropError(f"weights do not match model.canon={cfg.canon!r}: missing {missing}, unexpected {unknown}")
    return ours


def igsm_config(model: GPT, tokenizer: Tokenizer):
    """The ``IgsmConfig`` (igsm/hf_remote) that describes ``model``: any Canon layers, any rope_dim."""
    require("transformers")
    from igsm.hf_remote.configuration_igsm import IgsmConfig

    cfg = model.cfg
    return IgsmConfig(
        vocab_size=model.padded_vocab,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        max_position_embeddings=cfg.block_size,
        rotary_dim=cfg.rotary_dim,
        rope_base=float(cfg.rope_base),
        canon=cfg.canon,
        canon_kernel=cfg.canon_kernel,
        bias=cfg.bias,
        layer_norm_eps=LAYER_NORM_EPS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_id,  # prompts start with eos (igsm.tokenizer.encode_prompt)
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )


def _write_remote_code(folder: Path) -> None:
    """Copy the modeling code into the folder and name it in config.json (``auto_map``)."""
    import shutil

    from igsm.hf_remote import REMOTE_CODE_DIR, REMOTE_CODE_FILES

    for name in REMOTE_CODE_FILES:
        shutil.copyfile(REMOTE_CODE_DIR / name, folder / name)
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg["auto_map"] = dict(IGSM_AUTO_MAP)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (how byte-level BPE spells bytes)."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def gpt2_merges() -> tuple[tuple[bytes, bytes], ...]:
    """The GPT-2 merges in rank order, recovered from the shipped ranks: the merge that makes a
    token is the last step of BPE on its bytes using only lower ranks (about 1.5 s)."""
    ranks = _gpt2_encoding()._mergeable_ranks
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while True:
            best, best_rank = None, None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best_rank is None or best_rank >= rank:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:
            raise InteropError(f"gpt2 ranks: token {token!r} (rank {rank}) is not one merge of lower ranks")
        merges.append((parts[0], parts[1]))
    return tuple(merges)


def _word_backend(tok: WordTokenizer):
    """The word tokenizer as a ``tokenizers.Tokenizer`` (see the module docstring)."""
    tk = require("tokenizers")
    vocab = {piece: i for i, piece in enumerate(tok.vocab)}
    merges = [(" ", c) for c in tok.vocab if len(c) == 1 and not c.isspace() and (" " + c) in vocab and " " in vocab]
    model = tk.models.BPE(vocab=vocab, merges=merges, unk_token="[UNK]", fuse_unk=False, ignore_merges=True)
    backend = tk.Tokenizer(model)
    backend.pre_tokenizer = tk.pre_tokenizers.Split(tk.Regex(WORD_PATTERN), behavior="isolated")
    backend.decoder = tk.decoders.Fuse()
    specials = list(tok.vocab[: tok.end_id + 1])
    backend.add_special_tokens([tk.AddedToken(s, special=True, normalized=False) for s in specials])
    return backend


def _gpt2_backend():
    """GPT-2 byte-level BPE as a ``tokenizers.Tokenizer``, from the shipped ranks."""
    tk = require("tokenizers")
    spell = _byte_to_unicode()

    def text(b: bytes) -> str:
        return "".join(spell[x] for x in b)

    ranks = _gpt2_encoding()._mergeable_ranks
    vocab = {text(b): r for b, r in ranks.items()}
    merges = [(text(a), text(b)) for a, b in gpt2_merges()]
    backend = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = tk.decoders.ByteLevel()
    specials = ["<|endoftext|>", "[START]", "[MID]", "[END]"]  # ids 50256..50259, in this order
    backend.add_special_tokens([tk.AddedToken(s, special=True, normalized=False) for s in specials])
    for s, i in zip(specials, range(GPT2_EOT, GPT2_EOT + 4)):
        if backend.token_to_id(s) != i:
            raise InteropError(f"gpt2 tokenizer: {s} got id {backend.token_to_id(s)}, expected {i}")
    return backend


def hf_tokenizer(tok: Tokenizer, model_max_length: Optional[int] = None):
    """A transformers ``PreTrainedTokenizerFast`` that encodes and decodes like ``tok``.

    ``hf(text)["input_ids"] == tok.encode(text)`` for text without special-token names, and the
    specials' names in a text (``"[EOS]"``, ``"<|endoftext|>"``) become their ids, as usual in
    transformers. No beginning/end tokens are added.
    """
    transformers = require("transformers")
    if isinstance(tok, WordTokenizer):
        backend = _word_backend(tok)
        special = {"unk_token": "[UNK]", "pad_token": "[PAD]", "eos_token": "[EOS]", "bos_token": "[EOS]"}
    elif isinstance(tok, GPT2Tokenizer):
        backend = _gpt2_backend()
        special = {"pad_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}
    else:
        raise InteropError(f"tokenizer {tok!r} has no transformers form")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, clean_up_tokenization_spaces=False,
        model_max_length=model_max_length or int(1e30),  # transformers' own "no limit" value
        padding_side="left",  # decoder-only generation pads on the left
        **special,
    )


def fresh_letters_processor(tokenizer: Tokenizer, prompt_len: int):
    """A transformers ``LogitsProcessor`` that does what ``eval.fresh_letters`` does in
    :func:`igsm.decode.greedy_decode`: right after ``" as"``, a letter this row already defined
    (in the tokens generated after the ``prompt_len`` prompt positions) is never chosen.

    ``model.generate(ids, logits_processor=LogitsProcessorList([fresh_letters_processor(tok,
    ids.shape[1])]))`` then reproduces igsm's evaluation of a model trained with it (the tiny preset).
    """
    transformers = require("transformers")
    define_id, letter_ids = tokenizer.letter_slot_ids()

    class FreshLetters(transformers.LogitsProcessor):
        def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
            # input_ids [B, prompt_len + G] (left-padded prompt, then G generated), scores [B, V]
            naming = input_ids[:, -1] == define_id  # [B]: the next token names a new letter
            if not bool(naming.any()):
                return scores
            generated = input_ids[:, prompt_len:]  # [B, G]
            before = input_ids[:, prompt_len - 1 : -1]  # [B, G]: the token before each generated one
            letters = torch.tensor(letter_ids, device=input_ids.device)
            new = (before == define_id) & torch.isin(generated, letters)  # [B, G]: letters defined so far
            V = scores.shape[-1]
            defined = torch.zeros(scores.shape[0], V + 1, dtype=torch.bool, device=scores.device)  # [B, V+1]
            defined.scatter_(1, torch.where(new, generated, V), True)  # column V collects the rest
            return scores.masked_fill(defined[:, :V] & naming[:, None], float("-inf"))

    return FreshLetters()


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

def export_model(model: GPT, tokenizer: Tokenizer, out_dir: Union[str, Path],
                 train_config: Optional[TrainConfig] = None, source: Optional[str] = None) -> Path:
    """Write ``model`` and ``tokenizer`` as a transformers folder (safetensors, config.json,
    generation_config.json, tokenizer files) plus ``igsm.json`` and a README.md naming ``source``.
    A plain model becomes a GPT-NeoX; one with Canon layers an ``igsm`` model whose modeling code
    is in the folder (load it with ``trust_remote_code=True``). Returns the folder."""
    transformers = require("transformers")
    require("safetensors")
    from igsm.cli_config import config_to_dict

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InteropError(f"--out {out}: exists and is not a folder")
    canon = bool(model.cfg.canon)
    if canon:  # no transformers architecture has Canon layers: igsm's own code goes with the folder
        from igsm.hf_remote.modeling_igsm import IgsmForCausalLM

        config, model_class, weights = igsm_config(model, tokenizer), IgsmForCausalLM, to_igsm_state_dict(model)
    else:
        config, model_class = neox_config(model, tokenizer), transformers.GPTNeoXForCausalLM
        weights = to_neox_state_dict(model)
    with torch.device("meta"):  # no random init of weights that are replaced at once
        hf_model = model_class(config)
    hf_model.load_state_dict(weights, strict=False, assign=True)
    hf_model.tie_weights()
    missing = [n for n, p in hf_model.named_parameters() if p.is_meta]
    if missing:
        raise InteropError(f"export: no weights for {missing[:3]}")
    hf_model.eval()
    gen = hf_model.generation_config
    gen.do_sample = False
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tokenizer.eos_id, tokenizer.eos_id, tokenizer.pad_id
    # Ids past the tokenizer (the embedding is padded to a multiple of 64) are never generated.
    gen.suppress_tokens = list(range(tokenizer.vocab_size, model.padded_vocab)) or None
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out, safe_serialization=True)
    if canon:
        _write_remote_code(out)
    else:
        _add_legacy_rope_keys(out / "config.json", model.cfg.rope_base, rotary_fraction(model.cfg))
    hf_tokenizer(tokenizer, model_max_length=model.cfg.block_size).save_pretrained(out)
    _set_tokenizer_class(out / "tokenizer_config.json")
    meta = {
        "format": IGSM_FORMAT, "version": IGSM_FORMAT_VERSION,
        "vocab_size": tokenizer.vocab_size,  # the tokenizer's; config.json holds the padded size
        "model": config_to_dict(model.cfg),
        "tokenizer": tokenizer.to_dict(),
        "train_config": config_to_dict(train_config) if train_config is not None else None,
    }
    (out / IGSM_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(model, tokenizer, source), encoding="utf-8")
    return out


def model_card(model: GPT, tokenizer: Tokenizer, source: Optional[str] = None) -> str:
    """A short README.md for the folder: what the model is and how to prompt it."""
    cfg = model.cfg
    if tokenizer.name == "word":
        prompt = ('`"[EOS][PROBLEM]" + problem + "[SOLUTION]"` as text; the model continues with the '
                  'solution, `[ANSWER]`, the answer and `[EOS]`.')
    else:
        prompt = ("the ids `[50256, 222] + tokenizer(\" \" + problem).input_ids + [223]` (222-224 are the "
                  "problem/solution/answer marker bytes, which have no text form); the model continues with "
                  "\" \" + solution, 224, \" \" + answer and 50256.")
    if cfg.canon:
        title = "igsm format with Canon layers"
        kind = (f"rotary embeddings on {cfg.rotary_dim} of {cfg.head_dim} dims per head and Canon layers "
                f"{cfg.canon} (kernel {cfg.canon_kernel}), ")
        load = ("Load it with `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True, "
                "local_files_only=True)` (and `AutoTokenizer` with the same flags): the modeling code is "
                "`modeling_igsm.py` in this folder (torch and transformers only).\n\n")
    else:
        title, kind, load = "GPT-NeoX format", "rotary embeddings, ", ""
    return (
        f"# iGSM model ({title})\n\n"
        f"Exported by `python -m igsm export`{f' from `{source}`' if source else ''}: a GPT-2-style model with "
        f"{kind}{cfg.n_layer} layers, {cfg.n_head} heads, {cfg.d_model} dimensions, "
        f"{model.num_params():,} parameters; `{tokenizer.name}` tokenizer ({tokenizer.vocab_size} ids; the "
        f"embedding is padded to {model.padded_vocab}, and generation_config.json suppresses the padding ids).\n\n"
        f"{load}Prompt: {prompt} igsm's evaluation decodes greedily. `igsm.json` holds the training config; "
        "igsm reads the folder back with `igsm.hf.load_pretrained(DIR)` or `python probe.py ckpt=DIR` "
        "(docs/interop.md in the igsm repository).\n"
    )


def _add_legacy_rope_keys(path: Path, base: float, fraction: float) -> None:
    """transformers < 5 reads ``rotary_pct`` / ``rotary_emb_base`` (default 0.25 / 10000): write
    them too, so the folder means the same model to older versions (newer ones ignore them)."""
    cfg = json.loads(path.read_text())
    cfg.update({"rotary_pct": fraction, "rotary_emb_base": float(base), "rope_theta": float(base)})
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _set_tokenizer_class(path: Path) -> None:
    """Name the class every transformers version knows for a plain tokenizer.json (version 5
    writes its new name, ``TokenizersBackend``, and reads the old one as the same class)."""
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def export_checkpoint(ckpt: Union[str, Path], out_dir: Union[str, Path]) -> Path:
    """A ``train.py`` checkpoint -> a transformers folder (see :func:`export_model`)."""
    from igsm.lit import GPTLitModule

    path = Path(ckpt)
    if not path.is_file():
        raise InteropError(f"CKPT {ckpt}: no such file "
                           "(a train.py checkpoint, e.g. logs/tiny/version_0/checkpoints/last.ckpt)")
    try:
        lit = GPTLitModule.load_from_checkpoint(str(path), map_location="cpu", weights_only=False)
    except Exception as e:  # a damaged or foreign file: one line, not a traceback
        raise InteropError(f"CKPT {ckpt}: not a readable train.py checkpoint ({type(e).__name__}: {e})"[:400]) from None
    return export_model(lit.model, lit.tokenizer, out_dir, train_config=lit.cfg, source=str(ckpt))


# ---------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------

class Pretrained(NamedTuple):
    """A model read from a transformers folder, with what it needs to be probed or evaluated."""

    model: GPT  # eval mode, float32, CPU
    tokenizer: Tokenizer
    train_config: TrainConfig


def is_pretrained_dir(path: Union[str, Path]) -> bool:
    """True for a folder with a transformers ``config.json`` (what :func:`load_pretrained` reads)."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file()


def check_pretrained(path: Union[str, Path]) -> None:
    """Fail early, with one line, when :func:`load_pretrained` cannot read ``path``: the extra is
    missing, or config.json describes a model igsm's GPT cannot represent."""
    require("safetensors")
    folder = Path(path)
    if not is_pretrained_dir(folder):
        raise InteropError(f"{path}: not a transformers folder (no config.json)")
    try:
        c = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InteropError(f"{folder / 'config.json'}: not readable JSON ({e})") from None
    _check_config(c, str(folder / "config.json"))


def _read_weights(folder: Path) -> dict[str, Tensor]:
    st = require("safetensors.torch")
    single = folder / "model.safetensors"
    if single.is_file():
        return st.load_file(str(single))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        weights = {}
        for shard in shards:
            weights.update(st.load_file(str(folder / shard)))
        return weights
    raise InteropError(f"{folder}: no model.safetensors (or model.safetensors.index.json); "
                       "save with safe_serialization=True")


def _check_config(c: dict, where: str) -> None:
    """config.json of a GPT-NeoX or of igsm's own model (Canon layers): see the two checks."""
    if c.get("model_type") == IGSM_MODEL_TYPE:
        _check_igsm_config(c, where)
    else:
        _check_neox_config(c, where)


def _check_igsm_config(c: dict, where: str) -> None:
    """The keys of an ``igsm`` config.json that igsm's GPT reads, each with its allowed values."""
    def need(key: str, ok: bool, allowed: str) -> None:
        if not ok:
            raise InteropError(f"{where}: {key}={c.get(key)!r} is not supported; igsm's GPT needs {allowed}")

    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "canon_kernel"):
        need(key, isinstance(c.get(key), int) and c[key] >= 1, "a positive integer")
    need("hidden_size", c["hidden_size"] % c["num_attention_heads"] == 0, "a multiple of num_attention_heads")
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    rotary = c.get("rotary_dim")
    need("rotary_dim", isinstance(rotary, int) and 0 <= rotary <= head_dim and rotary % 2 == 0,
         f"an even integer in 0..{head_dim} (the head dim)")
    canon = c.get("canon")
    need("canon", isinstance(canon, str) and set(canon) <= set("ABCD") and len(set(canon)) == len(canon),
         "distinct letters of 'ABCD'")
    need("layer_norm_eps", math.isclose(c.get("layer_norm_eps", 1e-5), LAYER_NORM_EPS), str(LAYER_NORM_EPS))
    need("tie_word_embeddings", c.get("tie_word_embeddings", True) is True, "true")


def _check_neox_config(c: dict, where: str) -> None:
    """Everything in config.json that igsm's GPT cannot represent is an error naming the key."""
    def need(key: str, ok: bool, allowed: str) -> None:
        if not ok:
            raise InteropError(f"{where}: {key}={c.get(key)!r} is not supported; igsm's GPT needs {allowed}")

    need("model_type", c.get("model_type") == "gpt_neox", "'gpt_neox'")
    need("use_parallel_residual", c.get("use_parallel_residual") is False, "false (sequential residual)")
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    head_dim = c.get("hidden_size", 0) // max(1, c.get("num_attention_heads", 1))
    rotary = _neox_rotary_dim(c)
    if not (0 <= rotary <= head_dim and rotary % 2 == 0):
        raise InteropError(f"{where}: partial_rotary_factor/rotary_pct={_neox_rotary_fraction(c)!r} rotates {rotary} "
                           f"of {head_dim} head dims; igsm's GPT needs an even number (model.rope_dim)")
    if rope.get("rope_type", "default") != "default":
        raise InteropError(f"{where}: rope_type={rope.get('rope_type')!r} is not supported; only 'default'")
    need("hidden_act", c.get("hidden_act", "gelu") == "gelu", "'gelu'")
    need("intermediate_size", c.get("intermediate_size") == 4 * c.get("hidden_size", 0), "4 * hidden_size")
    need("layer_norm_eps", math.isclose(c.get("layer_norm_eps", 1e-5), LAYER_NORM_EPS), str(LAYER_NORM_EPS))
    need("attention_bias", c.get("attention_bias", True) is True, "true")


def _neox_rotary_fraction(c: dict) -> float:
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    return float(rope.get("partial_rotary_factor", c.get("rotary_pct", 0.25)))


def _neox_rotary_dim(c: dict) -> int:
    """Dims of each head GPT-NeoX rotates: int(head_dim * fraction), as transformers computes it."""
    head_dim = c.get("hidden_size", 0) // max(1, c.get("num_attention_heads", 1))
    return int(head_dim * _neox_rotary_fraction(c))


def _guess_tokenizer(folder: Path, padded_vocab: int) -> Tokenizer:
    """For a folder without igsm.json: GPT-2 BPE when its tokenizer has GPT-2's end-of-text id."""
    tf = require("transformers")
    try:
        hf = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)  # never a hub
    except Exception as e:
        raise InteropError(f"{folder}: no igsm.json and no loadable tokenizer ({type(e).__name__})") from None
    if hf.convert_tokens_to_ids("<|endoftext|>") == GPT2_EOT and padded_vocab >= GPT2Tokenizer.vocab_size:
        return GPT2Tokenizer()
    raise InteropError(f"{folder}: no {IGSM_FILE} and the tokenizer is not GPT-2's; igsm can only probe models "
                       "using its word or gpt2 tokenizer (export from igsm writes igsm.json)")


def load_pretrained(path: Union[str, Path]) -> Pretrained:
    """Read a transformers folder written by :func:`export_model` (GPT-NeoX, or igsm's own model
    with Canon layers), or a compatible GPT-NeoX trained elsewhere, into igsm's GPT, tokenizer and
    training config.

    Without ``igsm.json`` the tokenizer must be GPT-2's and the training config is the default
    (the paper's iGSM-med data with the gpt2 tokenizer) with the model's sizes.
    """
    from igsm.cli_config import config_from_dict

    folder = Path(path)
    if not is_pretrained_dir(folder):
        raise InteropError(f"{path}: not a transformers folder (no config.json)")
    c = json.loads((folder / "config.json").read_text())
    _check_config(c, str(folder / "config.json"))
    own = c.get("model_type") == IGSM_MODEL_TYPE  # igsm's own model (Canon layers), else GPT-NeoX
    meta_path = folder / IGSM_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    padded = int(c["vocab_size"])
    if meta is not None:
        if meta.get("format") != IGSM_FORMAT or meta.get("version") != IGSM_FORMAT_VERSION:
            raise InteropError(f"{meta_path}: format {meta.get('format')!r} version {meta.get('version')!r} "
                               f"is not {IGSM_FORMAT!r} version {IGSM_FORMAT_VERSION}")
        tokenizer = tokenizer_from_dict(meta["tokenizer"])
        model_cfg = config_from_dict(ModelConfig, meta["model"])
        train_cfg = config_from_dict(TrainConfig, meta["train_config"]) if meta.get("train_config") else TrainConfig()
    else:
        tokenizer = _guess_tokenizer(folder, padded)
        train_cfg = TrainConfig()
        train_cfg.data.tokenizer = tokenizer.name
        train_cfg.resolve()
        model_cfg = ModelConfig(bias=True)
    # config.json is the authority on shapes (a model edited or trained elsewhere).
    model_cfg.n_layer, model_cfg.n_head = int(c["num_hidden_layers"]), int(c["num_attention_heads"])
    model_cfg.n_embd = int(c["hidden_size"]) if int(c["hidden_size"]) != 64 * model_cfg.n_head else None
    model_cfg.block_size = int(c.get("max_position_embeddings", model_cfg.block_size))
    if own:
        model_cfg.rope_base = float(c.get("rope_base", 10000.0))
        rotary = int(c["rotary_dim"])
        model_cfg.canon, model_cfg.canon_kernel = c["canon"], int(c["canon_kernel"])
        model_cfg.bias = bool(c.get("bias", True))
    else:
        rope = c.get("rope_parameters") or {}
        model_cfg.rope_base = float(rope.get("rope_theta", c.get("rope_theta", c.get("rotary_emb_base", 10000.0))))
        rotary = _neox_rotary_dim(c)
        model_cfg.canon = ""  # _check_neox_config: GPT-NeoX has none
    model_cfg.rope_dim = None if rotary == model_cfg.head_dim else rotary
    model_cfg.compile = False
    train_cfg.model = model_cfg
    model = GPT(model_cfg, tokenizer.vocab_size)
    if model.padded_vocab != padded:
        raise InteropError(f"{folder / 'config.json'}: vocab_size={padded} but the {tokenizer.name} tokenizer "
                           f"({tokenizer.vocab_size} ids) pads to {model.padded_vocab} "
                           f"(a multiple of {VOCAB_MULTIPLE})")
    expected = set(model.state_dict())
    if own:
        state = from_igsm_state_dict(_read_weights(folder), model_cfg, expected)
    else:
        state = from_neox_state_dict(_read_weights(folder), model_cfg)
    if set(state) != expected:
        raise InteropError(f"{folder}: weights do not match the model: missing {sorted(expected - set(state))[:3]}")
    for name, t in state.items():
        if t.shape != model.state_dict()[name].shape:
            raise InteropError(f"{folder}: {name} has shape {tuple(t.shape)}, "
                               f"expected {tuple(model.state_dict()[name].shape)}")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    model.eval()
    return Pretrained(model, tokenizer, train_cfg)


__all__ = [
    "HF_EXTRA", "MissingExtraError", "InteropError", "require", "to_neox_state_dict", "from_neox_state_dict",
    "neox_config", "igsm_config", "to_igsm_state_dict", "from_igsm_state_dict",
    "hf_tokenizer", "gpt2_merges", "fresh_letters_processor", "export_model", "export_checkpoint",
    "Pretrained", "is_pretrained_dir", "check_pretrained", "load_pretrained",
]
