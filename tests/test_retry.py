"""Retry data (Part 2.2, igsm.retry): generation, tokens, and grading of retractions."""

import json
import subprocess
import sys

import pytest

from conftest import draw_problems
from igsm.config import GENERATOR_PRESETS, ConfigError, generator_preset
from igsm.parse import verify_text
from igsm.problem import ABS, INST, RETRACTION, Param, Problem
from igsm.retry import retry_candidates
from igsm.tokenizer import build_tokenizer
from igsm.verify import ERROR_KINDS, verify_solution, verify_solution_strict
from igsm.world import load_world


@pytest.mark.parametrize("kind", ["retry", "retry_weak"])
def test_retries_leave_the_problem_alone(kind):
    plain = draw_problems("small_cpu", 60, 3, "train")
    retry = draw_problems("small_cpu", 60, 3, "train", retry_rate=0.5, retry_kind=kind)
    assert sum(len(p.retries) for p in retry) > 20
    for a, b in zip(plain, retry):
        assert a.problem_text == b.problem_text and a.solution == b.clean_solution
        assert a.template_hash == b.template_hash and a.solution_sentences == b.solution_sentences
    again = draw_problems("small_cpu", 60, 3, "train", retry_rate=0.5, retry_kind=kind)
    assert [p.solution for p in again] == [p.solution for p in retry]  # deterministic per (seed, index)


def _structure_inputs_by_hand(p):
    """Every parameter of the structure graph and its inputs, enumerated from ``p.children`` alone:
    an instance parameter per edge (inputs from its equation), an abstract one per item and deeper
    layer (span 1: the item's edges; longer: its edges and its children's abstract parameters)."""
    out = {}
    for i, layer in enumerate(p.children):
        for j, kids in enumerate(layer):
            for x in kids:
                out[Param(INST, i, j, x)] = set(p.equations[Param(INST, i, j, x)].inputs)
    for i, layer in enumerate(p.names):
        for j in range(len(layer)):
            kids = p.children[i][j] if i < len(p.children) else []
            for k in range(i + 1, len(p.names)):
                ins = {Param(INST, i, j, x) for x in kids}
                if k > i + 1:
                    ins |= {Param(ABS, i + 1, x, k) for x in kids}
                out[Param(ABS, i, j, k)] = ins
    return out


@pytest.mark.parametrize("preset", sorted(GENERATOR_PRESETS))
def test_retry_candidates_equal_an_independent_enumeration(preset):
    """``retry`` draws from every parameter of the structure (abstract ones outside the dependency
    graph included) that is neither computed nor computable at that point, as Part 2.2 does."""
    outside = 0
    for p in draw_problems(preset, 40, 3, "train"):
        by_hand = _structure_inputs_by_hand(p)
        for q, eq in p.equations.items():
            assert set(eq.inputs) == by_hand[q]  # the graph's abstract parameters agree with the structure
        for k in range(len(p.solution_order)):
            known = set(p.solution_order[:k])
            expected = {q for q, ins in by_hand.items() if q not in known and not ins <= known}
            got = retry_candidates(p, k, "retry", "next")
            assert len(got) == len(set(got)) and set(got) == expected, (preset, k)
            outside += sum(q not in p.equations for q in got)
            assert retry_candidates(p, k, "retry_weak", "next") == p.solution_order[k:]
            assert retry_candidates(p, k, "retry_weak", "later") == p.solution_order[k + 1:]
    assert outside > 0  # parameters the problem never uses are candidates too


@pytest.mark.parametrize("kind,weak_from", [("retry", "next"), ("retry_weak", "next"), ("retry_weak", "later")])
def test_retries_follow_the_rule(kind, weak_from):
    next_step = 0
    for p in draw_problems("small_cpu", 150, 3, "train", retry_rate=0.5, retry_kind=kind, retry_weak_from=weak_from):
        seen: dict = {}
        by_hand = _structure_inputs_by_hand(p)
        for k, a in p.retries:
            known = set(p.solution_order[:k])
            assert a not in known and a in by_hand
            if kind == "retry":
                assert not by_hand[a] <= known  # not computable yet
            elif weak_from == "next":
                assert a in p.solution_order[k:]  # still to be defined by this solution
                next_step += a == p.solution_order[k]
            else:
                assert a in p.solution_order[k + 1:]  # defined after the next step
            assert a not in seen.get(k, set())  # never the same A twice before one correct step
            seen.setdefault(k, set()).add(a)
        assert p.solution.count(f" as {RETRACTION}.") == len(p.retries)
    assert (next_step > 0) == (kind == "retry_weak" and weak_from == "next")


def test_retractions_include_parameters_outside_the_graph():
    """Abstract parameters no statement or question uses are among the retracted ones (they were
    missing before: the draw only knew the dependency graph)."""
    retries = [(p, a) for p in draw_problems("med", 200, 3, "train", retry_rate=0.3) for _, a in p.retries]
    outside = [a for p, a in retries if a not in p.equations]
    assert len(retries) > 300 and len(outside) > 0.2 * len(retries)
    assert all(a.kind == ABS for a in outside)  # every instance parameter is stated, so in the graph


def test_unused_parameter_retraction_is_graded_by_readiness():
    """The verifier grades a retraction of a parameter the problem never uses like any other: a
    true regret when some input was not computed yet, a false one when it was ready."""
    seen = {True: 0, False: 0}
    world = load_world(generator_preset("med").world)
    for p in draw_problems("med", 150, 3, "train"):
        by_hand = _structure_inputs_by_hand(p)
        for a, ins in by_hand.items():
            if a in p.equations:
                continue
            ready = not ins  # before the first step nothing is computed: ready only without inputs
            text = f"Define {p.param_name(a)} as {RETRACTION}. " + p.clean_solution
            r = verify_solution_strict(p, text, p.answer)
            assert r.correct and (r.true_regrets, r.false_regrets) == ((0, 1) if ready else (1, 0)), (text, r)
            if not ready:  # from the text alone: the same (an item without children may be absent from the text)
                t = verify_text(p.problem_text, text, str(p.answer), world)
                assert t.correct and (t.true_regrets, t.false_regrets) == (1, 0), t
            seen[ready] += 1
    assert seen[True] > 0 and seen[False] > 10


def test_retry_rate_is_geometric_per_step():
    ps = draw_problems("med", 400, 3, "train", retry_rate=0.2)
    steps = sum(len(p.solution_order) for p in ps)
    mean = sum(len(p.retries) for p in ps) / steps
    assert 0.17 < mean < 0.30  # 0.2 / 0.8 = 0.25 when candidates never run out


@pytest.mark.parametrize("preset,kind,weak_from,rate", [
    ("small_cpu", "retry", "next", 0.1), ("small_cpu", "retry", "next", 0.3), ("med", "retry", "next", 0.3),
    ("med", "retry", "next", 0.6), ("tiny", "retry", "next", 0.5), ("small_cpu", "retry_weak", "next", 0.3),
    ("med", "retry_weak", "next", 0.6), ("small_cpu", "retry_weak", "later", 0.3)])
def test_retry_streams_verify(preset, kind, weak_from, rate):
    world = load_world(generator_preset(preset).world)
    total = false_regrets = 0
    for p in draw_problems(preset, 150, 3, "train", retry_rate=rate, retry_kind=kind, retry_weak_from=weak_from):
        r = verify_solution_strict(p, p.solution, p.answer)
        assert r.correct, (p.solution, r)
        assert r.retractions == len(p.retries) == r.true_regrets + r.false_regrets
        if kind == "retry":
            assert r.false_regrets == 0  # every retracted parameter was not computable yet
        total += r.retractions
        false_regrets += r.false_regrets
        t = verify_text(p.problem_text, p.solution, str(p.answer), world)
        assert t.correct and (t.retractions, t.true_regrets) == (r.retractions, r.true_regrets), t
        q = Problem.from_graph_json(json.loads(json.dumps(p.graph_json())))
        assert q.retries == p.retries
    assert total > 30
    if kind == "retry_weak" and weak_from == "next":
        assert false_regrets > 0  # the next step itself is always ready


def test_bad_retractions_are_reported_not_accepted():
    p = next(p for p in draw_problems("small_cpu", 200, 3, "train") if len(p.solution_order) >= 2)
    s = p.solution_sentences
    name = p.param_name
    q0 = name(p.solution_order[0])
    cases = {
        "back after a value": s[0][:-1] + f" {RETRACTION}. " + " ".join(s[1:]),
        "so v = BACK": s[0].split("; so ")[0] + f"; so {p.letters[p.solution_order[0]]} = {RETRACTION}. "
                       + " ".join(s[1:]),
        "BACK; steps": f"Define {q0} as {RETRACTION}; " + s[0].split("; ", 1)[1] + " " + " ".join(s[1:]),
        "unknown name": f"Define Nobody's Nothing as {RETRACTION}. " + p.solution,
        "already computed": s[0] + f" Define {q0} as {RETRACTION}. " + " ".join(s[1:]),
    }
    for what, text in cases.items():
        r = verify_solution_strict(p, text, p.answer)
        assert not r.correct and r.error == "bad_retraction", (what, r)
        assert verify_solution(p, text, p.answer).error == "bad_retraction"
    assert "bad_retraction" in ERROR_KINDS


def test_false_regret_is_counted_and_accepted():
    p = draw_problems("small_cpu", 1, 3, "train")[0]
    first = p.solution_order[0]  # the first step is always ready (a constant)
    text = f"Define {p.param_name(first)} as {RETRACTION}. " + p.clean_solution
    r = verify_solution_strict(p, text, p.answer)
    assert r.correct and (r.retractions, r.true_regrets, r.false_regrets) == (1, 0, 1)
    # without the grading of retractions this is a parse error; cut inside it, it is truncated
    cut = text[: len(f"Define {p.param_name(first)} as BA")]
    assert verify_solution_strict(p, cut).error == "truncated"
    assert verify_solution_strict(p, f"Define {p.param_name(first)} as {RETRACTION}.").error == "truncated"


@pytest.mark.parametrize("name,world", [("word", "tiny"), ("word", None), ("gpt2", None)])
def test_retraction_word_is_one_token(name, world):
    tok = build_tokenizer(name, world)
    assert len(tok.encode(" " + RETRACTION)) == 1
    p = draw_problems("small_cpu", 40, 3, "train", retry_rate=0.5)
    text = next(x.solution for x in p if x.retries)
    assert tok.decode(tok.encode(text)) == text
    as_id = tok.encode(" as")[0]
    ids = tok.encode(text)
    back = tok.encode(" " + RETRACTION)[0]
    assert all(ids[i - 1] == as_id for i, t in enumerate(ids) if t == back)
    if name == "word":  # appended after the sorted pieces: no other id moved
        assert tok.vocab[-2:] == ("BACK", " BACK") and tok.vocab[back] == " BACK"
        body = tok.vocab[9:-2]
        assert list(body) == sorted(body)


def test_generate_cli_retry_options():
    def run(*args, inp=None):
        return subprocess.run([sys.executable, "-m", "igsm", *args], input=inp, capture_output=True)

    g = run("generate", "--preset", "small_cpu", "--n", "60", "--retry-rate", "0.3", "--retry-kind", "retry")
    assert g.returncode == 0, g.stderr
    assert b"as BACK." in g.stdout and b"retry_rate=0.3" in g.stderr
    v = run("verify", "--in", "-", inp=g.stdout)
    assert v.returncode == 0 and v.stdout.decode().startswith("60 verified: 60 correct, 0 wrong; "), v.stdout
    assert run("generate", "--n", "1", "--retry-rate", "1.5").returncode == 2
    assert run("generate", "--n", "1", "--retry-kind", "nope").returncode == 2
    with pytest.raises(ConfigError):
        generator_preset("tiny", retry_kind="sometimes")
    for weak_from in ("next", "later"):
        w = run("generate", "--preset", "small_cpu", "--n", "60", "--retry-rate", "0.5", "--retry-kind", "retry_weak",
                "--retry-weak-from", weak_from)
        assert w.returncode == 0 and f"retry_weak_from={weak_from}".encode() in w.stderr, w.stderr
        graphs = [json.loads(x)["graph"] for x in w.stdout.decode().splitlines()]
        next_step = sum(a == g["solution_order"][k] for g in graphs for k, a in g.get("retries", []))
        assert (next_step > 0) == (weak_from == "next")
    assert run("generate", "--n", "1", "--retry-rate", "0.2", "--retry-weak-from", "now").returncode == 2
    with pytest.raises(ConfigError, match=r"retry_weak_from='now'.*\['next', 'later'\]"):
        generator_preset("tiny", retry_weak_from="now")


@pytest.mark.parametrize("name", ["word", "gpt2"])
def test_retry_loss_mask_covers_exactly_the_wrong_steps(name):
    from igsm.data import IGNORE_INDEX, PackedBatches, retraction_targets, training_example

    cfg = generator_preset("small_cpu", retry_rate=0.4)
    tok = build_tokenizer(name, load_world("tiny") if name == "word" else None)
    p = next(x for x in draw_problems("small_cpu", 40, 3, "train", retry_rate=0.4) if len(x.retries) >= 2)
    ids, first = training_example(tok, p, "solution")
    masked = retraction_targets(tok, p)
    wrong = [s for s, w in p.solution_parts() if w]
    text = tok.decode([ids[i] for i in masked])
    assert text.replace(" Define", "\nDefine").strip().split("\n") == [s[: -len(" BACK.")] for s in wrong]
    back = tok.encode(" " + RETRACTION)[0]
    assert all(ids[i] != back for i in masked) and len(masked) > 0

    def targets(retry_loss):
        ds = PackedBatches(cfg, tok, context=256, batch_size=4, loss_on="solution", seed=0, retry_loss=retry_loss)
        return ds.batch(0)["inputs"], ds.batch(0)["targets"]

    inputs, full = targets("full")
    _, mask = targets("mask")
    assert (inputs == targets("full")[0]).all()
    dropped = (full != IGNORE_INDEX) & (mask == IGNORE_INDEX)
    assert dropped.any() and ((full == IGNORE_INDEX) <= (mask == IGNORE_INDEX)).all()
    assert (mask[full == back] == back).all() and (full == back).any()  # BACK keeps its loss


def test_train_config_retry_keys_and_presets():
    from igsm.cli_config import load_config
    from igsm.config import TrainConfig

    for rate in ("0.05", "0.2", "0.5"):
        cfg = load_config(TrainConfig, [f"preset=retry/rate-{rate}"])
        assert cfg.data.retry_rate == float(rate) and cfg.data.retry_kind == "retry"
        assert cfg.data.retry_loss == "full" and cfg.data.preset == "small_cpu" and cfg.model.n_layer == 8
    cfg = load_config(TrainConfig, ["preset=small_cpu", "data.retry_rate=0.2", "data.retry_loss=mask",
                                    "data.retry_kind=retry_weak", "data.retry_weak_from=later"])
    assert (cfg.data.retry_rate, cfg.data.retry_loss, cfg.data.retry_kind) == (0.2, "mask", "retry_weak")
    from igsm.data import IGSMDataModule

    ds = IGSMDataModule(cfg.data, cfg.eval, seed=0).train_dataset()
    assert ds.retry_loss == "mask" and (ds.gen_cfg.retry_rate, ds.gen_cfg.retry_kind) == (0.2, "retry_weak")
    assert ds.gen_cfg.retry_weak_from == "later"
    assert load_config(TrainConfig, ["preset=small_cpu"]).data.retry_weak_from == "next"  # Part 2.2's default
    for bad in ("data.retry_loss=some", "data.retry_rate=1.0", "data.retry_kind=never", "data.retry_weak_from=soon"):
        with pytest.raises(ConfigError, match=bad.split("=")[0].split(".")[1]):
            load_config(TrainConfig, ["preset=small_cpu", bad])


def test_eval_json_counts_retractions():
    from igsm.config import parse_bucket
    from igsm.lit import EvalScores, bucket_entry
    from igsm.verify import Tally

    m = EvalScores()
    m.update(Tally(n=4, correct=2, answer_correct=3, unnecessary=0, errors={"not_ready": 1, "bad_retraction": 1},
                   retractions=3, with_retractions=2, true_regrets=2, false_regrets=1))
    e = bucket_entry(parse_bucket("<=4"), m.compute(), 5)
    assert e["retractions_per_problem"] == 0.75 and e["solutions_with_retractions"] == 2
    assert (e["true_regrets"], e["false_regrets"]) == (2, 1) and e["errors"]["bad_retraction"] == 1


def test_validation_grades_and_counts_the_models_retractions(tmp_path, monkeypatch):
    """Evaluation through the LightningModule: generations with retractions (the generator's own
    retry solutions as an oracle) are correct, and eval.json counts their retractions."""
    import lightning as L

    from igsm.cli_config import config_to_dict, load_config
    from igsm.config import TrainConfig
    from igsm.data import IGSMDataModule
    from igsm.lit import GPTLitModule

    cfg = load_config(TrainConfig, [
        "preset=tiny", "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "data.retry_rate=0.5",
        "data.num_workers=0", "eval.n=6", "eval.batch_size=6", "eval.max_new_tokens=8", "eval.buckets=[3,4]",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto", "trainer.enable_progress_bar=false"])
    dm = IGSMDataModule(cfg.data, cfg.eval, seed=cfg.seed)
    ds, tok, answers, expected = dm.eval_dataset(), dm.tokenizer, {}, {}
    for k in range(len(ds)):
        batch = ds[k]
        for p, prompt in zip(batch.problems, batch.prompts):
            answers[tuple(prompt)] = tok.encode_example(p.problem_text, p.solution, p.answer)[len(prompt) - 1:]
            expected[batch.bucket] = expected.get(batch.bucket, 0) + len(p.retries)
    monkeypatch.setattr(GPTLitModule, "decode", lambda self, prompts: [answers[tuple(p)] for p in prompts])
    module = GPTLitModule(config_to_dict(cfg), tok.to_dict())
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.validate(module, datamodule=dm, verbose=False)
    assert sum(expected.values()) > 0
    for b, e in enumerate(module.last_eval):
        assert e["accuracy"] == 1.0 and e["errors"] == {}
        assert e["retractions_per_problem"] == pytest.approx(expected.get(b, 0) / 6)
        assert e["true_regrets"] == expected.get(b, 0) and e["false_regrets"] == 0


def test_stats_counts_steps_and_retractions_apart():
    def run(*args, inp=None):
        return subprocess.run([sys.executable, "-m", "igsm", *args], input=inp, capture_output=True)

    plain = run("generate", "--preset", "small_cpu", "--n", "40").stdout
    retry = run("generate", "--preset", "small_cpu", "--n", "40", "--retry-rate", "0.4").stdout
    a, b = run("stats", "--in", "-", inp=plain).stdout.decode(), run("stats", "--in", "-", inp=retry).stdout.decode()
    line = [x for x in a.splitlines() if x.startswith("solution sentences")]
    assert line and line == [x for x in b.splitlines() if x.startswith("solution sentences")]
    assert "retractions" in b and "retractions" not in a


def test_verifier_never_raises_on_stray_back():
    import random

    rng = random.Random(0)
    for p in draw_problems("small_cpu", 60, 3, "train", retry_rate=0.3):
        words = p.solution.split(" ")
        for _ in range(8):
            w = list(words)
            for _ in range(rng.randint(1, 3)):
                w.insert(rng.randrange(len(w) + 1), rng.choice([RETRACTION, RETRACTION + ".", RETRACTION + ";"]))
            if rng.random() < 0.3:
                del w[rng.randrange(len(w)):]  # cut anywhere
            r = verify_solution_strict(p, " ".join(w), p.answer)  # a verifier bug would raise here
            assert r.error in ERROR_KINDS or r.correct
