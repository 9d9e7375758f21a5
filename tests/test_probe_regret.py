"""The regret probe (Part 2.2, issue 21 item 4): labels, balanced draws, the natural read position,
controls, and the error analysis on the model's own outputs."""

import importlib.util

import lightning.pytorch as pl
import pytest
import torch

from conftest import draw_problems
from igsm.config import ConfigError, ModelConfig, ProbeConfig, generator_preset, validate_probe
from igsm.generator import generate_problem, problem_rng, world_for
from igsm.model import GPT
from igsm.tokenizer import build_tokenizer
from igsm.verify import verify_solution
from probing.analysis import regret_cases
from probing.controls import FineTuned, finetune_positive, last_end_index
from probing.data import ProbeDataModule, ProbeDataset, ProblemTokens, problem_pairs, regret_necessity_control
from probing.labels import ALL_TASKS, NUM_CLASSES, TASKS, ProblemLabels, draw_queries, necessity_baseline
from probing.vprobe import VProbe

GEN = generator_preset("small_cpu", split="any")


def test_regret_is_a_task_on_request_only():
    assert "regret" in ALL_TASKS and "regret" not in TASKS and NUM_CLASSES["regret"] == 2
    cfg = ProbeConfig()
    assert "regret" not in cfg.probe.tasks
    cfg.probe.tasks = ["nece", "regret"]
    validate_probe(cfg)
    cfg.probe.tasks = ["regrets"]
    with pytest.raises(ConfigError):
        validate_probe(cfg)


def test_regret_labels_and_balance():
    n = [0, 0]
    for p in draw_problems(GEN, 150, 5, "regret"):
        lab = ProblemLabels(p)
        known = set()
        for j, step in enumerate(p.solution_order):
            wrong, ready = lab.regret_candidates(j)
            assert step in ready  # the solution's own next step is a ready one
            for a in wrong:
                assert a not in known and any(q not in known for q in p.equations[a].inputs)
                assert lab.label("regret", a, position=j) == 1
            for a in ready:
                assert lab.label("regret", a, position=j) == 0 == 1 - lab.label("can_next", a, position=j)
            known.add(step)
        qs = draw_queries(p, "regret", problem_rng(0, "q"), 10)
        assert len(qs) <= 10 and len(set(qs)) == len(qs)
        assert all(0 <= j < len(p.solution_order) and b is None for j, _, b in qs)
        for nece in (True, False):  # exactly balanced per problem within each necessity stratum
            labels = [lab.label("regret", a, position=j) for j, a, _ in qs if (a in p.necessary) == nece]
            assert labels.count(0) == labels.count(1)
            n[nece] += len(labels)
    assert n[True] > 200 and n[False] > 200


@pytest.fixture(scope="module")
def baseline_script(repo_root):
    spec = importlib.util.spec_from_file_location("regret_necessity_baseline",
                                                  repo_root / "scripts" / "regret_necessity_baseline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_necessity_alone_predicts_nothing_on_the_regret_queries(baseline_script):
    """On the probe's test queries of 300 tiny test-template problems, the rule "regret = not
    necessary" (or its opposite) scores 50%: the probe must read readiness. Issue 21's draw, which
    took every ready query from the necessary parameters, let that rule score ~65%."""
    gen = generator_preset("tiny", split="test")
    stratified, issue21 = [], []
    for i in range(300):
        p = generate_problem(gen, problem_rng(0, "probe", "test", i), world_for(gen))
        lab = ProblemLabels(p)
        for queries, out in ((draw_queries(p, "regret", problem_rng(1, i), 10), stratified),
                             (baseline_script.issue21_regret_queries(p, problem_rng(1, i), 10), issue21)):
            out += [(int(a in p.necessary), lab.label("regret", a, position=j)) for j, a, _ in queries]
    new, old = necessity_baseline(stratified), necessity_baseline(issue21)
    assert new["n"] > 1000 and new["acc"] == 0.5 and new["mapping"] == "either (tie)"
    assert sum(label for _, label in stratified) * 2 == len(stratified)  # the majority guess: 50% too
    assert old["n"] > 1000 and old["acc"] > 0.6 and old["mapping"] == "regret = not nece"
    assert necessity_baseline([]) == {"acc": None, "mapping": None, "n": 0}
    assert necessity_baseline([(1, 1), (1, 1), (0, 1)])["mapping"] == "regret = nece"


def test_baseline_script_and_control_read_the_probe_test_queries(baseline_script):
    """scripts/regret_necessity_baseline.py and probe.json's necessity control see exactly the
    (nece, label) pairs of the regret ProbeDataset that probe.py tests on."""
    from igsm.cli_config import load_config
    from igsm.config import TrainConfig, generator_config
    from igsm.data_setup import build_data_tokenizer

    data = load_config(TrainConfig, ["preset=tiny"]).data
    tok = build_data_tokenizer(data)
    ds = ProbeDataset(tok, generator_config(data), "regret", "test", 12, seed=3, draws=10)
    rows = [(r["nece"], r["label"]) for i in range(len(ds)) for r in ds[i]]
    assert len(rows) > 40
    assert baseline_script.nece_and_labels("tiny", n_problems=12, seed=3, draws=10) == rows
    control = regret_necessity_control(ds)
    assert control["necessity_acc"] == necessity_baseline(rows)["acc"] == 0.5
    assert baseline_script.main(["--presets", "tiny", "--problems", "6"]) == 0
    with pytest.raises(ValueError, match="regret"):
        regret_necessity_control(ProbeDataset(tok, generator_config(data), "nece", "test", 2))


@pytest.mark.parametrize("tok_name", ["word", "gpt2"])
def test_regret_input_ends_with_define_a_as(tok_name):
    tok = build_tokenizer(tok_name, world_for(GEN) if tok_name == "word" else None)
    as_id = tok.encode(" as")[0]
    seen_next = 0
    for i, p in enumerate(draw_problems(GEN, 40, 5, "regret")):
        t = ProblemTokens(tok, p)
        for r in problem_pairs(tok, p, "regret", problem_rng(0, "pairs", i), 10):
            ids, j, a = r["ids"], r["position"], r["a"]
            assert ids[-1] == as_id and tok.end_id not in ids and tok.start_id not in ids  # no [START] A [END]
            cut = t.boundaries[j]
            assert ids[:cut] == t.ids[:cut]
            assert tok.decode(ids[cut:]).strip() == f"Define {p.param_name(a)} as"
            if p.solution_order[j] == a:  # the correct next step: a prefix of the real example
                assert t.ids[: len(ids)] == ids
                seen_next += 1
    assert seen_next > 10


def test_positive_control_reads_the_last_real_token_without_end():
    idx = torch.tensor([[5, 6, 7, 0, 0], [5, 9, 3, 8, 0], [5, 1, 0, 0, 0]])
    assert last_end_index(idx, 9, pad_id=0).tolist() == [2, 1, 1]
    assert last_end_index(idx, 9).tolist() == [-1, 1, -1]  # the old behaviour without pad_id


def test_vprobe_trains_and_tests_regret():
    tok = build_tokenizer("word", world_for(GEN))
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=512), tok.vocab_size)
    m = VProbe(gpt, ["regret"], control="both")
    dm = ProbeDataModule(tok, GEN, ["regret"], batch_size=10, draws=6, test_problems=6)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(m, dm)
    trainer.test(m, dm, verbose=False)
    res = m.results["tasks"]["regret"]
    assert res["trained"]["acc"] is not None and res["random_init"]["acc"] is not None
    assert res["majority"]["acc"] == pytest.approx(0.5)  # balanced
    ft = FineTuned(gpt, 2, tok.end_id, tok.pad_id)
    batch = next(iter(dm.test_dataloader()[0]))
    assert ft(batch["idx"]).shape == (len(batch["idx"]), 2)
    # the positive control reads the regret row's last real token, where the V-probe reads it
    rows = torch.arange(len(batch["idx"]))
    assert (last_end_index(batch["idx"], tok.end_id, tok.pad_id) == batch["end"]).all()
    assert (batch["idx"][rows, batch["end"]] == tok.encode(" as")[0]).all()
    pos = finetune_positive(gpt, tok, GEN, "regret", steps=2, lr=1e-3, batch_size=8, draws=6, seed=0)
    assert pos(batch["idx"]).shape == (len(batch["idx"]), 2)


def test_regret_cases_on_generated_solutions():
    tok = build_tokenizer("word", world_for(GEN))
    as_id = tok.encode(" as")[0]
    checked = 0
    for p in draw_problems(GEN, 80, 5, "regret"):
        if len(p.solution_order) < 2:
            continue
        # a correct solution: every step is a correct step, none flagged as a mistake
        cases = regret_cases(tok, p, p.solution, verify_solution(p, p.solution, p.answer))
        assert [m for _, m in cases] == [0] * len(p.solution_order)
        t = ProblemTokens(tok, p)
        assert all(ids == t.ids[: len(ids)] and ids[-1] == as_id for ids, _ in cases)
        # the last step written instead of the one before it needs: a not_ready mistake
        a, b = p.solution_order[-2], p.solution_order[-1]
        if a not in p.equations[b].inputs:
            continue
        s = p.solution_sentences
        letter = next(c for c in "zyxwvZYXWV" if c not in p.letters.values())
        bad = " ".join(s[:-2] + [f"Define {p.param_name(b)} as {letter}; so {letter} = 3."])
        r = verify_solution(p, bad, p.answer)
        assert r.error == "not_ready"
        cases = regret_cases(tok, p, bad, r)
        assert [m for _, m in cases] == [0] * (len(s) - 2) + [1]
        assert tok.decode(cases[-1][0]).endswith(f"Define {p.param_name(b)} as")
        checked += 1
    assert checked > 3


def test_run_analysis_reports_regret():
    from igsm.config import AnalysisConfig
    from probing.analysis import analysis_scalars, run_analysis

    gen = generator_preset("tiny")
    tok = build_tokenizer("word", world_for(gen))
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=512), tok.vocab_size)
    m = VProbe(gpt, ["regret", "can_next"], control="none")
    res = run_analysis(m, tok, gen, AnalysisConfig(n=3, batch_size=3, max_new_tokens=12, reask_op=3))
    assert set(res["regret"]) >= {"not_ready_steps", "probe_flagged_not_ready", "rate_flagged_not_ready",
                                  "correct_steps", "probe_flagged_correct", "rate_flagged_correct"}
    analysis_scalars(res)  # no crash on None rates


def test_probe_py_regret_end_to_end(tiny_train_run, tmp_path):
    """probe.py with probe.tasks=[regret, can_next] and the analysis, on the shared tiny checkpoint."""
    import json

    import probe

    _, ckpt = tiny_train_run
    rc = probe.main([f"ckpt={ckpt}", f"log_root={tmp_path}", "name=r", "probe.tasks=[regret,can_next]",
                     "probe.analysis=true", "analysis.n=3", "analysis.max_new_tokens=24", "trainer.max_steps=2",
                     "probe.test_problems=4", "probe.batch_size=6", "probe.draws=4", "probe.positive_control=true",
                     "probe.positive_steps=2", "trainer.enable_progress_bar=false", "trainer.devices=1",
                     "trainer.strategy=auto"])
    assert rc == 0
    run = tmp_path / "r" / "version_0"
    res = json.loads((run / "probe.json").read_text())
    e = res["tasks"]["regret"]
    assert 0 <= e["acc"] <= 1 and 0 <= e["random_init_acc"] <= 1 and 0 <= e["positive_acc"] <= 1
    assert e["majority_acc"] == pytest.approx(0.5)
    # the necessity-only control beside them: 50% on the stratified queries
    assert e["necessity_acc"] == 0.5 and e["necessity"]["n"] == e["n_test_pairs"]
    assert "regret" in json.loads((run / "analysis.json").read_text())
