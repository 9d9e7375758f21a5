"""Tokenizers (docs/spec.md#11-tokens): the closed-vocabulary igsm word tokenizer (default) and GPT-2 BPE (offline).

Both implement one interface, :class:`Tokenizer`, and import no torch:

- ``name`` (``"word"`` | ``"gpt2"``), ``vocab_size`` (real size, specials included), and the ids
  ``pad_id, eos_id, problem_id, solution_id, answer_id, start_id, mid_id, end_id``
  (the last three are the V-probe markers ``[START] [MID] [END]``).
- ``encode(text)``: plain text, no specials. ``decode(ids, skip_specials=False)``: never raises;
  special ids render as their names (``[EOS]``, ``<|endoftext|>``, ``[START]`` ...), ids outside the
  vocabulary (or not integers) render as ``[UNK]``; with ``skip_specials=True`` both are dropped.
- ``encode_example(problem, solution, answer)``: the training sequence
  ``[problem_id] P [solution_id] S [answer_id] A [eos_id]``;
  ``encode_prompt(problem)``: ``[eos_id, problem_id] P [solution_id]``, so ``prompt[1:]`` is a
  prefix of the example. ``parse_generation(ids)``: the ids generated after the prompt ->
  ``(solution_text, answer_text or None)``, cut at the first eos; never raises.
- ``to_dict()`` / :func:`tokenizer_from_dict` rebuild the exact tokenizer (for checkpoints);
  :func:`build_tokenizer` is the factory.

The two layouts differ only in how a text part is encoded: GPT-2 encodes each part with a
leading space (``" The number ..."``) and uses the byte tokens 222/223/224 as markers (the
reference layout); the word tokenizer encodes parts as they are and has its own specials.
"""

from __future__ import annotations

import base64
import hashlib
import operator
import re
import string
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Union

from igsm.render import LETTERS

TOKENIZER_NAMES = ("word", "gpt2")

# The special tokens of the word tokenizer, at ids 0..8 in this order.
WORD_SPECIALS = ("[PAD]", "[UNK]", "[EOS]", "[PROBLEM]", "[SOLUTION]", "[ANSWER]", "[START]", "[MID]", "[END]")
UNK_TEXT = "[UNK]"


def _as_int(i: Any) -> int:
    """An id as a plain int, or -1 (never a valid id) when it is not an integer."""
    try:
        return operator.index(i)
    except Exception:
        return -1


def _clean_ids(ids: Any) -> list[int]:
    try:
        return [_as_int(i) for i in ids]
    except Exception:  # not iterable
        return []


class Tokenizer:
    """The interface shared by both tokenizers (see the module docstring)."""

    name: str
    vocab_size: int
    pad_id: int
    eos_id: int
    problem_id: int
    solution_id: int
    answer_id: int
    start_id: int
    mid_id: int
    end_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int], skip_specials: bool = False) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def _encode_part(self, text: str) -> list[int]:
        """How one text part of an example is encoded (GPT-2 adds a leading space)."""
        return self.encode(text)

    def encode_example(self, problem: str, solution: str, answer: Union[str, int]) -> list[int]:
        """The full training sequence: problem, solution, answer, end of text."""
        return (
            [self.problem_id]
            + self._encode_part(problem)
            + [self.solution_id]
            + self._encode_part(solution)
            + [self.answer_id]
            + self._encode_part(str(answer))
            + [self.eos_id]
        )

    def encode_prompt(self, problem: str) -> list[int]:
        """The generation prompt: ``[eos, problem marker] + problem + [solution marker]``."""
        return [self.eos_id, self.problem_id] + self._encode_part(problem) + [self.solution_id]

    def letter_slot_ids(self) -> tuple[int, list[int]]:
        """(id of " as", ids of the 52 letters a..z A..Z as they follow it): in a solution, the
        token after " as" names a new letter (``Define X as v;``, docs/spec.md#7-the-text)."""
        ids = self.encode(" as" + "".join(" " + c for c in LETTERS))
        if len(ids) != 1 + len(LETTERS):
            raise ValueError(f"{self!r} does not encode ' as' and each letter as one token")
        return ids[0], ids[1:]

    def parse_generation(self, ids: Iterable[int]) -> tuple[str, Optional[str]]:
        """Split the ids generated after the prompt into (solution text, answer text or None).

        Stops at the first eos; the answer is whatever follows the first answer marker (None when
        there is none). Specials elsewhere render as their names, so garbage stays visible to the
        verifier. Both texts are stripped of surrounding whitespace (which also removes GPT-2's
        leading space). Never raises.
        """
        try:
            clean = _clean_ids(ids)
            if self.eos_id in clean:
                clean = clean[: clean.index(self.eos_id)]
            if self.answer_id in clean:
                k = clean.index(self.answer_id)
                sol, ans = clean[:k], clean[k + 1 :]
                return self.decode(sol).strip(), self.decode(ans).strip()
            return self.decode(clean).strip(), None
        except Exception:  # defensive: the contract is "never raises"
            return "", None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


# --------------------------------------------------------------------------------------------
# The igsm word tokenizer
# --------------------------------------------------------------------------------------------

# Pre-tokenizer: pieces carry their leading space, like GPT-2. In order: a possessive 's (not
# followed by a letter), a run of letters, a run of digits, one other symbol, an underscore, one
# whitespace character. Every character falls in exactly one class, so the pieces always
# concatenate back to the text. A piece never contains a space except as its first character,
# which lets encode() work on space-separated chunks (see WordTokenizer.encode).
WORD_PATTERN = r"'s(?![^\W\d_])| ?[^\W\d_]+| ?\d+| ?[^\w\s]| ?_|\s"
_WORD_RE = re.compile(WORD_PATTERN)

# Every template of docs/spec.md#7-the-text (statements, questions, solutions, the paper's answer display); the
# vocabulary holds each of their pieces with and without a leading space.
TEMPLATE_TEXTS = (
    "The number of each A's B equals 5.",
    "The number of each A's B equals each C's D.",
    "The number of each A's B equals 5 more than each C's D.",
    "The number of each A's B equals 5 times as much as each C's D.",
    "The number of each A's B equals the sum of each C's D and each E's F.",
    "The number of each A's B equals the difference of each C's D and each E's F.",
    "The number of each A's B equals 5 more than the sum of each C's D, each E's F and each G's H.",
    "How many B does A have?",
    "Define A's B as v; t = a - b = 4 - 9 = 18; u = t + c = 18 + 2 = 20; so v = 3 * u = 3 * 20 = 14.",
    "Answer: 16.",
)
# Retry data's retraction word (igsm.retry: "Define A as BACK."), one token with and without its
# space. Appended after the sorted vocabulary, so the ids of every other piece stay what they were
# before retry data existed (runs, checkpoints and seeded results made without it are unchanged).
RETRY_PIECES = ("BACK", " BACK")
MAX_NUMBER_TOKEN = 22  # numbers 0..22 are single tokens; larger ones fall back to digit tokens

_CACHE_LIMIT = 1 << 18  # bound on memoised chunks per tokenizer (arbitrary text cannot grow it forever)


def _word_pieces(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def word_vocab(texts: Iterable[str]) -> list[str]:
    """The sorted non-special vocabulary covering ``texts`` (world names, categories), the
    templates, numbers 0..22, digits, the 52 ASCII letters and per-character fallbacks, then the
    retraction word of retry data (RETRY_PIECES)."""
    pieces: set[str] = set()
    chars: set[str] = set(string.printable)
    # the 52 letters and 10 digits are in string.printable: with the " X" forms below they give
    # every solution letter and the digit fallback for numbers above 22
    sources = list(TEMPLATE_TEXTS) + [str(n) for n in range(MAX_NUMBER_TOKEN + 1)]
    for t in list(texts) + sources:
        chars.update(t)
        pieces.update(_word_pieces(t))
    vocab = set(chars)
    for p in pieces:
        bare = p[1:] if p.startswith(" ") and len(p) > 1 else p
        if bare.isspace():
            continue
        vocab.add(bare)
        vocab.add(" " + bare)  # every word both at the start of a part and after a space
    for c in chars:  # " X" fallbacks so an unknown word after a space costs no extra space token
        if not c.isspace():
            vocab.add(" " + c)
    vocab.difference_update(WORD_SPECIALS)  # the literal text "[PAD]" is never a single piece anyway
    return sorted(vocab) + [p for p in RETRY_PIECES if p not in vocab]


def world_texts(world) -> list[str]:
    """The texts of a world that appear in problems: item names and category names."""
    return sorted(world.all_names()) + sorted(world.categories)


class WordTokenizer(Tokenizer):
    """Closed vocabulary: one token per word, number (0..22), letter or symbol, with its leading
    space. Specials at ids 0..8: ``[PAD] [UNK] [EOS] [PROBLEM] [SOLUTION] [ANSWER] [START] [MID]
    [END]``. A piece outside the vocabulary falls back to per-character tokens (``" X"`` for a
    leading space), so any text made of known characters round-trips; a character never seen
    (not in the world, not printable ASCII) encodes as ``[UNK]`` and decodes as ``"[UNK]"``.
    """

    name = "word"

    def __init__(self, vocab: Sequence[str], source: str = "<memory>"):
        vocab = list(vocab)
        if tuple(vocab[: len(WORD_SPECIALS)]) != WORD_SPECIALS:
            raise ValueError(f"word vocabulary must start with the specials {list(WORD_SPECIALS)}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("word vocabulary has duplicate entries")
        self.vocab: tuple[str, ...] = tuple(vocab)
        self.source = source
        self.vocab_size = len(vocab)
        (self.pad_id, self.unk_id, self.eos_id, self.problem_id, self.solution_id, self.answer_id,
         self.start_id, self.mid_id, self.end_id) = range(len(WORD_SPECIALS))
        n_special = len(WORD_SPECIALS)
        self._piece_to_id = {p: i for i, p in enumerate(vocab) if i >= n_special}
        self._id_to_text = dict(enumerate(vocab))  # specials render as their names
        self._id_to_plain = {i: p for i, p in enumerate(vocab) if i >= n_special}
        self._chunk_cache: dict[str, list[int]] = {}  # " chunk" -> ids
        self._first_cache: dict[str, list[int]] = {}  # chunk at the start of a text -> ids

    @classmethod
    def from_world(cls, world) -> WordTokenizer:
        """The tokenizer of a world: the same world always gives the same ids."""
        return cls(list(WORD_SPECIALS) + word_vocab(world_texts(world)), source=world.source)

    # -- encoding --------------------------------------------------------------------------------
    def _encode_piece_fallback(self, piece: str) -> list[int]:
        get = self._piece_to_id.get
        out = []
        if piece.startswith(" ") and len(piece) > 1 and (" " + piece[1]) in self._piece_to_id:
            out.append(self._piece_to_id[" " + piece[1]])
            piece = piece[2:]
        out.extend(get(c, self.unk_id) for c in piece)
        return out

    def _encode_uncached(self, text: str) -> list[int]:
        get = self._piece_to_id.get
        out: list[int] = []
        for p in _WORD_RE.findall(text):
            i = get(p)
            if i is None:
                out.extend(self._encode_piece_fallback(p))
            else:
                out.append(i)
        return out

    def encode(self, text: str) -> list[int]:
        """Plain text to ids. Works on space-separated chunks, each memoised: the pieces of
        ``text`` are exactly the pieces of its chunks (pieces hold a space only at their start)."""
        chunks = text.split(" ")
        first = chunks[0]
        ids = self._first_cache.get(first)
        if ids is None:
            ids = self._encode_uncached(first)
            if len(self._first_cache) < _CACHE_LIMIT:
                self._first_cache[first] = ids
        out = list(ids)
        cache = self._chunk_cache
        for c in chunks[1:]:
            ids = cache.get(c)
            if ids is None:
                ids = self._encode_uncached(" " + c)
                if len(cache) < _CACHE_LIMIT:
                    cache[c] = ids
            out += ids
        return out

    def decode(self, ids: Iterable[int], skip_specials: bool = False) -> str:
        table = self._id_to_plain if skip_specials else self._id_to_text
        unk = "" if skip_specials else UNK_TEXT
        get = table.get
        return "".join([get(i, unk) for i in _clean_ids(ids)])  # 2.0 is not an id: [UNK], as in gpt2

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"name": self.name, "version": 1, "pattern": WORD_PATTERN, "source": self.source,
                "vocab": list(self.vocab)}

    def __getstate__(self) -> dict:  # the memo caches are not worth pickling to workers
        state = self.__dict__.copy()
        state["_chunk_cache"], state["_first_cache"] = {}, {}
        return state


# --------------------------------------------------------------------------------------------
# GPT-2 BPE, offline
# --------------------------------------------------------------------------------------------

# The GPT-2 byte-pair ranks (the "r50k_base" / "gpt2" vocabulary, MIT-licensed by OpenAI), shipped
# with igsm so nothing is ever downloaded. Origin: whisper/assets/gpt2.tiktoken of the PyPI sdist
# openai-whisper 20250625 (openai_whisper-20250625.tar.gz). 835,554 bytes, 50,256 ranks; the
# sha256 is the one tiktoken itself expects for r50k_base.
GPT2_RANKS_FILE = Path(__file__).parent / "assets" / "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# GPT-2's pre-tokenizer, in tiktoken's equivalent fast form (tiktoken_ext.openai_public.r50k_pat_str).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOT = 50256


@lru_cache(maxsize=1)
def _gpt2_encoding():
    """The tiktoken Encoding, built from the local ranks file. The file is parsed here rather than
    with ``tiktoken.load.load_tiktoken_bpe``, which reads and writes a cache directory
    (``$TIKTOKEN_CACHE_DIR`` or ``/tmp/data-gym-cache``) even for local paths."""
    try:
        import tiktoken
    except ImportError as e:
        raise ImportError("the gpt2 tokenizer needs the 'tiktoken' package: pip install tiktoken") from e
    data = GPT2_RANKS_FILE.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != GPT2_RANKS_SHA256:
        raise ValueError(f"{GPT2_RANKS_FILE}: sha256 {digest} != expected {GPT2_RANKS_SHA256}")
    ranks = {}
    for line in data.splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return tiktoken.Encoding(
        name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": GPT2_EOT}, explicit_n_vocab=GPT2_EOT + 1,
    )


class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE in the reference iGSM layout (docs/spec.md#11-tokens).

    Markers are the byte tokens 222/223/224 (problem/solution/answer; bytes 0x80-0x82, which
    ASCII text never produces), eos = pad = 50256 ``<|endoftext|>`` (padding is masked out of the
    loss, so sharing the id is harmless). The V-probe markers are three new ids 50257-50259, so
    ``vocab_size`` = 50260. ``decode`` is the plain byte-level decode: 222-224 decode as their
    bytes (invalid UTF-8 alone, shown as U+FFFD), 50256 as ``<|endoftext|>``, 50257-50259 as
    ``[START] [MID] [END]``, anything else outside the vocabulary as ``[UNK]``.
    """

    name = "gpt2"
    vocab_size = GPT2_EOT + 4
    pad_id = GPT2_EOT
    eos_id = GPT2_EOT
    problem_id, solution_id, answer_id = 222, 223, 224
    start_id, mid_id, end_id = GPT2_EOT + 1, GPT2_EOT + 2, GPT2_EOT + 3
    _SPECIAL_TEXT = {GPT2_EOT: "<|endoftext|>", GPT2_EOT + 1: "[START]", GPT2_EOT + 2: "[MID]", GPT2_EOT + 3: "[END]"}

    def __init__(self) -> None:
        self._enc = _gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        """Plain text to ids; ``<|endoftext|>`` inside the text is encoded as ordinary text."""
        return self._enc.encode_ordinary(text)

    def _encode_part(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text if text.startswith(" ") else " " + text)

    def decode(self, ids: Iterable[int], skip_specials: bool = False) -> str:
        out: list[str] = []
        run: list[int] = []
        for i in _clean_ids(ids):
            if 0 <= i < GPT2_EOT:
                run.append(i)
                continue
            if run:
                out.append(self._enc.decode_bytes(run).decode("utf-8", errors="replace"))
                run = []
            if not skip_specials:
                out.append(self._SPECIAL_TEXT.get(i, UNK_TEXT))
        if run:
            out.append(self._enc.decode_bytes(run).decode("utf-8", errors="replace"))
        return "".join(out)

    def to_dict(self) -> dict:
        return {"name": self.name, "version": 1, "ranks_sha256": GPT2_RANKS_SHA256}

    def __reduce__(self):  # pickle as "rebuild from the shipped file", not 50k ranks
        return (GPT2Tokenizer, ())


# --------------------------------------------------------------------------------------------
# Factory and serialisation
# --------------------------------------------------------------------------------------------

def build_tokenizer(name: str, world=None) -> Tokenizer:
    """``"word"`` (vocabulary from ``world``: a World, a world file path, or None for the default
    world) or ``"gpt2"`` (``world`` is ignored)."""
    if name == "word":
        if world is None or isinstance(world, (str, Path)):
            from igsm.world import load_world

            world = load_world(world)
        return WordTokenizer.from_world(world)
    if name == "gpt2":
        return GPT2Tokenizer()
    raise ValueError(f"tokenizer name {name!r} is unknown; allowed: {list(TOKENIZER_NAMES)}")


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild the exact tokenizer stored by ``to_dict()`` (e.g. in a checkpoint)."""
    if not isinstance(d, dict) or d.get("name") not in TOKENIZER_NAMES:
        raise ValueError(f"not a tokenizer dict (name must be one of {list(TOKENIZER_NAMES)}): {d!r:.200}")
    if d["name"] == "word":
        if d.get("pattern", WORD_PATTERN) != WORD_PATTERN:
            raise ValueError("word tokenizer dict was made with a different pre-tokenizer pattern")
        return WordTokenizer(d["vocab"], source=d.get("source", "<memory>"))
    if d.get("ranks_sha256", GPT2_RANKS_SHA256) != GPT2_RANKS_SHA256:
        raise ValueError(f"gpt2 tokenizer dict names ranks {d['ranks_sha256']}, shipped: {GPT2_RANKS_SHA256}")
    return GPT2Tokenizer()
