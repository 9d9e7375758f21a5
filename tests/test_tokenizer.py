"""Tokenizers: lossless round trips on problem texts (docs/spec.md#7-the-text), layouts, parsing of
generations, serialisation."""

from __future__ import annotations

import pickle
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest

from igsm.tokenizer import (
    _WORD_RE,
    GPT2_RANKS_FILE,
    GPT2_RANKS_SHA256,
    RETRY_PIECES,
    WORD_SPECIALS,
    GPT2Tokenizer,
    WordTokenizer,
    build_tokenizer,
    tokenizer_from_dict,
    world_texts,
)
from igsm.world import load_world, parse_world

REPO = Path(__file__).resolve().parents[1]

TRICKY = ["Trader Joe's", "7-Eleven", "Crème Brûlée", "Room 101", "Salt and Pepper", "Aye-Aye",
          "Wrocław Zoo", "O'Malley's Deli", "2B Pencil", "Glow-in-the-Dark Backpack"]


def _small_world():
    """A two-family world built in memory, with the tricky names in one group."""
    def layer(cat, extra):
        return {"category": cat, "groups": {"g1": [f"{cat} {x}" for x in ("One", "Two", "Three")] + [extra],
                                            "g2": ["Alpha", "Beta", "Gamma", "Delta"]}}

    fam0 = [layer(c, "Trader Joe's") for c in ("Zoo", "Enclosure", "Animal", "Bone")]
    fam1 = [layer(c, "Crème Brûlée") for c in ("School", "Classroom", "Backpack", "Stationery")]
    fam0[0]["groups"]["g3"] = TRICKY
    return parse_world({"families": [{"layers": fam0}, {"layers": fam1}]})


@pytest.fixture(scope="module")
def world():
    return load_world()


@pytest.fixture(scope="module")
def word(world):
    return build_tokenizer("word", world)


@pytest.fixture(scope="module")
def gpt2():
    pytest.importorskip("tiktoken")
    return build_tokenizer("gpt2")


def _texts(world, n: int, seed: int = 0) -> list[str]:
    """Problem texts, questions and solutions in the formats of docs/spec.md#7-the-text, names from the world."""
    rng = random.Random(seed)
    names = sorted(world.all_names()) + TRICKY
    cats = world.categories
    letters = list(string.ascii_letters)

    def param():
        return f"{rng.choice(names)}'s {rng.choice(names + cats)}"

    def statement():
        head = f"The number of each {param()} equals "
        xs = [f"each {param()}" for _ in range(rng.randint(0, 4))]
        lit = rng.randint(0, 22)
        if not xs:
            return head + f"{lit}."
        if len(xs) == 1:
            body = rng.choice([xs[0], f"{lit} more than {xs[0]}", f"{lit} times as much as {xs[0]}"])
            return head + body + "."
        if len(xs) == 2:
            body = f"the {rng.choice(['sum', 'difference'])} of {xs[0]} and {xs[1]}"
        else:
            body = "the sum of " + ", ".join(xs[:-1]) + f" and {xs[-1]}"
        if rng.random() < 0.5:
            body = f"{lit} {rng.choice(['more than', 'times as much as'])} {body}"
        return head + body + "."

    def question():
        return f"How many {rng.choice(names + cats)} does {rng.choice(names)} have?"

    def solution():
        sents = []
        for _ in range(rng.randint(1, 5)):
            v, a, b, t = rng.sample(letters, 4)
            n1, n2, n3 = (rng.randint(0, 22) for _ in range(3))
            op = rng.choice("+-*")
            sents.append(rng.choice([
                f"Define {param()} as {v}; so {v} = {n1}.",
                f"Define {param()} as {v}; so {v} = {a} = {n1}.",
                f"Define {param()} as {v}; so {v} = {a} {op} {b} = {n1} {op} {n2} = {n3}.",
                f"Define {param()} as {v}; {t} = {a} - {b} = {n1} - {n2} = {n3}; "
                f"so {v} = {n2} * {t} = {n2} * {n3} = {n1}.",
            ]))
        return " ".join(sents)

    out = []
    for _ in range(n):
        stmts = [statement() for _ in range(rng.randint(1, 6))]
        q = question()
        out.append(" ".join(stmts + [q]) if rng.random() < 0.5 else " ".join([q] + stmts))
        out.append(solution())
    return out


# ---- word tokenizer ----------------------------------------------------------------------------

def test_word_round_trip_generated_texts(word, world):
    for t in _texts(world, 300):
        ids = word.encode(t)
        assert word.decode(ids) == t
        assert word.unk_id not in ids
        assert all(len(WORD_SPECIALS) <= i < word.vocab_size for i in ids)


def test_word_one_token_per_word_number_letter_symbol(word):
    s = "Define Zoo's Bone as v; t = a - b = 4 - 9 = 18; so v = 3 * t = 3 * 18 = 8."
    pieces = [word.vocab[i] for i in word.encode(s)]
    assert pieces == ["Define", " Zoo", "'s", " Bone", " as", " v", ";", " t", " =", " a", " -", " b", " =",
                      " 4", " -", " 9", " =", " 18", ";", " so", " v", " =", " 3", " *", " t", " =", " 3",
                      " *", " 18", " =", " 8", "."]
    q = [word.vocab[i] for i in word.encode("How many Bone does Zoo have? 16")]
    assert q == ["How", " many", " Bone", " does", " Zoo", " have", "?", " 16"]


def test_word_tricky_names_are_single_tokens_per_piece(word):
    pieces = [word.vocab[i] for i in word.encode("The number of each Trader Joe's's Crème Brûlée equals 5.")]
    assert pieces == ["The", " number", " of", " each", " Trader", " Joe", "'s", "'s", " Crème", " Brûlée",
                      " equals", " 5", "."]
    assert [word.vocab[i] for i in word.encode(" 7-Eleven")] == [" 7", "-", "Eleven"]


def test_word_numbers_beyond_22_fall_back_to_digits(word):
    ids = word.encode("so v = 12345 + 23.")
    assert word.decode(ids) == "so v = 12345 + 23."
    pieces = [word.vocab[i] for i in ids]
    assert pieces[3:8] == [" 1", "2", "3", "4", "5"]
    assert pieces[9:11] == [" 2", "3"]
    assert [word.vocab[i] for i in word.encode("22")] == ["22"]


def test_word_unknown_names_round_trip(word):
    rng = random.Random(1)
    alphabet = string.printable + "éèüöåłůÉ"
    for _ in range(300):
        t = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert word.decode(word.encode(t)) == t, repr(t)
    t = "The number of each Zyxwvut Qqq's Blorp-9000 equals 5."
    ids = word.encode(t)
    assert word.decode(ids) == t and word.unk_id not in ids
    assert len(ids) > len(word.encode("The number of each Zoo's Bone equals 5."))


def test_word_never_seen_character_is_unk(word):
    ids = word.encode("a ∑ b")
    assert word.unk_id in ids
    assert word.decode(ids) == "a [UNK] b"
    assert word.decode(ids, skip_specials=True) == "a  b"
    assert word.decode([-1, 10**9, word.vocab_size, None, 2.0]) == "[UNK]" * 5
    letters = [word.vocab[i] for i in word.encode("a Z b")]
    assert letters == ["a", " Z", " b"]


def test_word_vocab_deterministic_and_world_dependent(world):
    a, b = build_tokenizer("word", world), WordTokenizer.from_world(world)
    assert a.vocab == b.vocab and a.vocab_size == len(a.vocab)
    assert a.vocab[: len(WORD_SPECIALS)] == WORD_SPECIALS
    # sorted, then retry data's retraction word (appended: the other ids did not move when it came)
    body = a.vocab[len(WORD_SPECIALS): -len(RETRY_PIECES)]
    assert list(body) == sorted(body) and a.vocab[-len(RETRY_PIECES):] == RETRY_PIECES
    small = WordTokenizer.from_world(_small_world())
    assert small.vocab == WordTokenizer.from_world(_small_world()).vocab and small.vocab_size < a.vocab_size
    for t in _texts(_small_world(), 30):  # a tokenizer of a small world still round-trips everything
        assert small.decode(small.encode(t)) == t
    index = {p: i for i, p in enumerate(a.vocab)}
    for n in world_texts(world):  # every piece of every name is one token, at the start or not
        for t in (n, " " + n):
            assert a.encode(t) == [index[p] for p in _WORD_RE.findall(t)]


def test_word_specials_fixed_ids(word):
    assert (word.pad_id, word.unk_id, word.eos_id, word.problem_id, word.solution_id, word.answer_id,
            word.start_id, word.mid_id, word.end_id) == tuple(range(9))
    assert word.name == "word"
    assert word.decode([word.start_id, word.mid_id, word.end_id]) == "[START][MID][END]"
    assert word.encode("[START]") != [word.start_id]  # plain text never yields specials


def test_word_encode_memo_matches_plain_regex(word, world):
    for t in _texts(world, 50, seed=3) + ["  double  spaces ", " lead", "trail ", "a\nb c\t d", ""]:
        assert word.encode(t) == word._encode_uncached(t)
        assert word.decode(word.encode(t)) == t


# ---- GPT-2 -------------------------------------------------------------------------------------

def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" The number") == [383, 1271]
    assert gpt2.encode("<|endoftext|>") != [50256]  # plain text, no specials
    assert gpt2.vocab_size == 50260 and gpt2.name == "gpt2"
    assert (gpt2.start_id, gpt2.mid_id, gpt2.end_id) == (50257, 50258, 50259)


def test_gpt2_asset_is_shipped_and_pinned():
    import hashlib

    assert hashlib.sha256(GPT2_RANKS_FILE.read_bytes()).hexdigest() == GPT2_RANKS_SHA256


def test_gpt2_reference_layout(gpt2):
    p, s = "The number of each Zoo's Bone equals 3. How many Bone does Zoo have?", "Define Zoo's Bone as a; so a = 3."
    ex = gpt2.encode_example(p, s, 3)
    assert ex == [222] + gpt2.encode(" " + p) + [223] + gpt2.encode(" " + s) + [224] + gpt2.encode(" 3") + [50256]
    assert gpt2.encode_prompt(p) == [50256, 222] + gpt2.encode(" " + p) + [223]
    assert gpt2.encode_example(" " + p, s, "3") == ex  # no second leading space


def test_gpt2_markers_never_in_world_text(gpt2, world):
    for t in world_texts(world) + _texts(world, 50):
        assert not {222, 223, 224, 50256} & set(gpt2.encode(" " + t)), t


def test_gpt2_round_trip_and_decode_never_raises(gpt2, world):
    for t in _texts(world, 50) + ["a ∑ b 😀 ü"]:
        assert gpt2.decode(gpt2.encode(t)) == t
    assert gpt2.decode([15496, 50256, 50257, -1, 10**9, None, "x", 995]) == \
        "Hello<|endoftext|>[START][UNK][UNK][UNK][UNK] world"
    assert gpt2.decode([15496, 50256, 50257, -1, 995], skip_specials=True) == "Hello world"


def test_gpt2_offline_no_cache_dir(tmp_path):
    """Building the tokenizer in a fresh process touches no tiktoken cache and no network."""
    code = (
        "import socket, os\n"
        "def no(*a, **k): raise RuntimeError('network used')\n"
        "socket.socket.connect = no; socket.create_connection = no\n"
        "from igsm.tokenizer import build_tokenizer\n"
        "t = build_tokenizer('gpt2'); assert t.encode('Hello world') == [15496, 995]\n"
        f"assert not os.listdir({str(tmp_path)!r})\n"
    )
    pytest.importorskip("tiktoken")
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    import os

    env.update({k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME")})
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr


# ---- shared interface --------------------------------------------------------------------------

@pytest.fixture(params=["word", "gpt2"])
def tok(request, word):
    if request.param == "gpt2":
        pytest.importorskip("tiktoken")
        return build_tokenizer("gpt2")
    return word


def test_layout_prompt_is_prefix_and_parse(tok, world):
    texts = _texts(world, 40, seed=7)
    for problem, solution in zip(texts[::2], texts[1::2]):
        ex = tok.encode_example(problem, solution, 17)
        prompt = tok.encode_prompt(problem)
        k = ex.index(tok.solution_id)
        assert prompt == [tok.eos_id] + ex[: k + 1]
        assert ex[0] == tok.problem_id and ex[-1] == tok.eos_id
        gen = ex[k + 1:]
        assert tok.parse_generation(gen) == (solution, "17")
        assert tok.parse_generation(gen + [tok.pad_id] * 3 + tok.encode(" junk")) == (solution, "17")
        cut = gen[: gen.index(tok.answer_id)]
        assert tok.parse_generation(cut) == (solution, None)  # truncated: no answer marker


def test_parse_generation_never_raises(tok):
    rng = random.Random(0)
    weird = [[], [tok.eos_id], [tok.answer_id], [tok.answer_id, tok.eos_id], [-5, 10**12], None, 5,
             ["a", None, 3.5], [tok.start_id, tok.answer_id, tok.answer_id, tok.mid_id]]
    weird += [[rng.randrange(-10, tok.vocab_size + 10) for _ in range(rng.randint(0, 60))] for _ in range(200)]
    for ids in weird:
        sol, ans = tok.parse_generation(ids)
        assert isinstance(sol, str) and (ans is None or isinstance(ans, str))
        assert isinstance(tok.decode(ids if isinstance(ids, list) else []), str)
    assert tok.parse_generation([tok.answer_id, tok.eos_id]) == ("", "")


def test_numpy_ids(tok):
    np = pytest.importorskip("numpy")
    ids = np.array(tok.encode_example("How many Bone does Zoo have?", "Define Zoo's Bone as a; so a = 3.", 3))
    k = int(np.where(ids == tok.solution_id)[0][0])
    assert tok.parse_generation(ids[k + 1:]) == ("Define Zoo's Bone as a; so a = 3.", "3")
    assert tok.decode(ids) == tok.decode(ids.tolist())


def test_to_dict_round_trip_and_pickle(tok, world):
    d = tok.to_dict()
    t2 = tokenizer_from_dict(d)
    t3 = pickle.loads(pickle.dumps(tok))
    texts = _texts(world, 20, seed=11)
    for t in (t2, t3):
        assert type(t) is type(tok) and t.vocab_size == tok.vocab_size and t.to_dict() == d
        assert [t.encode(x) for x in texts] == [tok.encode(x) for x in texts]
        for attr in ("pad_id", "eos_id", "problem_id", "solution_id", "answer_id", "start_id", "mid_id", "end_id"):
            assert getattr(t, attr) == getattr(tok, attr)


def test_from_dict_survives_a_different_world(word):
    """A checkpoint's tokenizer does not depend on the current world file."""
    t = tokenizer_from_dict(word.to_dict())
    other = WordTokenizer.from_world(_small_world())
    assert t.vocab == word.vocab and (t.vocab != other.vocab)


def test_factory_errors():
    with pytest.raises(ValueError, match="word.*gpt2"):
        build_tokenizer("bpe")
    with pytest.raises(ValueError):
        tokenizer_from_dict({"name": "nope"})
    with pytest.raises(ValueError):
        tokenizer_from_dict({"name": "gpt2", "ranks_sha256": "0" * 64})
    with pytest.raises(ValueError):
        WordTokenizer(["[PAD]", "a"])
    assert isinstance(build_tokenizer("gpt2"), GPT2Tokenizer) if _has_tiktoken() else True


def _has_tiktoken() -> bool:
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return False
    return True


def test_generated_problems_round_trip(tok):
    """Real generator output (skipped while the generator is absent): every part round-trips,
    the prompt is a prefix of the example, and parsing the example's tail gives back the parts."""
    try:
        from igsm import generate, generator_preset
    except ImportError:
        pytest.skip("igsm.generate not available yet")
    for preset in ("tiny", "med"):
        cfg = generator_preset(preset)
        t = tok
        if tok.name == "word" and preset == "tiny":
            from igsm.generator import world_for

            t = build_tokenizer("word", world_for(cfg))  # the small world's own, smaller vocabulary
        for i in range(60):
            p = generate(cfg, 5, i)
            for text in (p.problem_text, p.solution):
                assert t.decode(t.encode(text)) == text
            ex = t.encode_example(p.problem_text, p.solution, p.answer)
            k = ex.index(t.solution_id)
            assert t.encode_prompt(p.problem_text) == [t.eos_id] + ex[: k + 1]
            assert t.parse_generation(ex[k + 1:]) == (p.solution, str(p.answer))
            if t.name == "word":
                assert t.unk_id not in ex
