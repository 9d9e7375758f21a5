"""Training side: schedule, optimizer groups, compile, train.py end to end, resume, DDP, eval metrics."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import train
from igsm.cli_config import config_to_dict, load_config
from igsm.config import EVAL_BUCKETS, TrainConfig, parse_bucket
from igsm.data import IGSMDataModule
from igsm.lit import GPTLitModule, lr_multiplier, param_groups, uniform_letter_loss
from igsm.optim import MuonAdamW, build_optimizer, newton_schulz
from igsm.trainer import AtomicCheckpointIO, resolve_precision
from igsm.verify import ERROR_KINDS

# A 2-layer, 32-dim model on tiny data: a step takes milliseconds.
FAST = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=256",
    "data.context=256", "data.batch_size=4", "data.num_workers=0",
    "eval.n=4", "eval.batch_size=4", "eval.max_new_tokens=8", "eval.buckets=[2,3]",
    "trainer.accelerator=cpu", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    "trainer.devices=1", "trainer.strategy=auto",  # one process (the tiny default is two DDP processes)
]
EVAL_FIELDS = {"split", "op", "n", "accuracy", "answer_accuracy", "unnecessary_params_per_correct"}


@pytest.fixture
def one_thread_env(subprocess_env) -> dict:
    """Child processes with one intra-op thread, like this one (conftest): on a busy 2-core machine
    two spinning OpenMP threads per process make tiny models several times slower."""
    return dict(subprocess_env, OMP_NUM_THREADS="1")


class LossRecorder(Callback):
    """The training loss of every batch, in order."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].item())


def oracle_decode(cfg: TrainConfig, real_decode, first_k: int = 4):
    """A GPTLitModule.decode that answers problems with index < first_k by their true solution
    (the rest by the model), so accuracies are known and not trivially zero."""
    dm = IGSMDataModule(cfg.data, cfg.eval, seed=cfg.seed)
    ds, tok, answers = dm.eval_dataset(), dm.tokenizer, {}
    for k in range(len(ds)):
        batch = ds[k]
        for i, p, prompt in zip(batch.indices, batch.problems, batch.prompts):
            if i < first_k:
                answers[tuple(prompt)] = tok.encode_example(p.problem_text, p.solution, p.answer)[len(prompt) - 1:]

    def decode(self, prompts):
        return [answers.get(tuple(p), g) for p, g in zip(prompts, real_decode(self, prompts))]
    return decode


# -- pieces ------------------------------------------------------------------------------------

def test_lr_schedule_warms_up_then_decays_to_min_ratio() -> None:
    f = lambda s: lr_multiplier(s, warmup=10, total=110, min_ratio=0.01)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.505)
    assert f(110) == pytest.approx(0.01) and f(500) == pytest.approx(0.01)
    assert all(f(s) >= f(s + 1) for s in range(10, 120))


def test_no_weight_decay_for_biases_layernorm_embeddings() -> None:
    cfg = load_config(TrainConfig, FAST)
    module = GPTLitModule(config_to_dict(cfg), IGSMDataModule(cfg.data, cfg.eval, 0).tokenizer.to_dict())
    decay, no_decay = param_groups(module.model, 0.1)
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert all(p.ndim == 2 for p in decay["params"])
    assert all(".ln_" in names[id(p)] or "ln_f" in names[id(p)] or names[id(p)].endswith("bias")
               or names[id(p)] == "wte.weight"
               for p in no_decay["params"])
    assert any(names[id(p)] == "wte.weight" for p in no_decay["params"])  # the tied embedding / output head
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    n_params = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n_params == module.model.num_params()


@pytest.mark.parametrize("letter_loss", ["uniform", "sampled"])
def test_two_ranks_step_like_one_process_holding_both_halves(letter_loss, monkeypatch) -> None:
    """Under DDP each rank's loss is weighted by its share of the step's loss tokens, so the
    average of the two ranks' gradients (what DDP applies) equals the gradient of one process
    holding both halves of the batch. Fails with per-rank means: the halves hold different counts."""
    from types import SimpleNamespace
    cfg = load_config(TrainConfig, FAST + [f"data.letter_loss={letter_loss}", "data.loss_on=solution"])
    dm = IGSMDataModule(cfg.data, cfg.eval, 0)
    module = GPTLitModule(config_to_dict(cfg), dm.tokenizer.to_dict())
    module.log = lambda *a, **k: None
    batch = next(iter(dm.train_dataset()))
    rows = batch["inputs"].shape[0] // 2
    halves = [{k: v[sl] if torch.is_tensor(v) else v for k, v in batch.items()}
              for sl in (slice(None, rows), slice(rows, None))]
    counts = [int((h["targets"] != -100).sum()) for h in halves]
    assert counts[0] != counts[1]  # the halves hold different numbers of loss tokens

    def grads(step_batch, trainer) -> list[torch.Tensor]:
        module._trainer = trainer
        module.zero_grad()
        module.training_step(step_batch, 0).backward()
        return [p.grad.clone() for p in module.model.parameters()]

    one = grads(batch, None)
    total = float(sum(counts))
    two = SimpleNamespace(world_size=2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, *a, **k: t.fill_(total))  # the sum of both ranks
    ranks = [grads(h, two) for h in halves]
    module._trainer = None
    for g, a, b in zip(one, *ranks):
        torch.testing.assert_close((a + b) / 2, g, rtol=1e-4, atol=1e-6)


def test_uniform_letter_loss_targets_the_unused_letters() -> None:
    """Without letter slots it is plain cross-entropy; at a slot it is the cross-entropy against
    the uniform distribution over the letters not yet used, whose minimum puts equal mass on
    those letters and none on the used ones."""
    torch.manual_seed(0)
    V, letter_ids = 64, torch.arange(10, 62)  # 52 letter ids
    logits = torch.randn(2, 5, V, requires_grad=True)
    targets = torch.randint(0, V, (2, 5))
    targets[0, 0] = -100
    none = torch.full((2, 5), -1)
    plain = torch.nn.functional.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100)
    assert torch.allclose(uniform_letter_loss(logits, targets, none, letter_ids), plain)

    used = none.clone()
    used[1, 2] = 0b101  # letters 0 and 2 named before this slot
    loss = uniform_letter_loss(logits, targets, used, letter_ids)
    log_p = torch.log_softmax(logits[1, 2], -1)[letter_ids]
    unused = [k for k in range(52) if k not in (0, 2)]
    slot_term = -log_p[unused].mean()
    others = torch.nn.functional.cross_entropy(
        logits.view(-1, V), targets.masked_fill(used >= 0, -100).view(-1), ignore_index=-100, reduction="sum")
    assert torch.allclose(loss, (others + slot_term) / 9)  # 10 targets, one ignored: 8 one-hot + 1 slot
    loss.backward()
    grad = logits.grad[1, 2, letter_ids]
    assert grad[0] > 0 and grad[2] > 0  # used letters are pushed down
    assert (grad[unused] < 0).sum() > 0


def test_compile_keeps_checkpoint_keys(monkeypatch) -> None:
    # The eager backend runs torch.compile's wrapping (dynamo) without a C++ toolchain on CPU.
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend="eager"))
    cfg_plain = load_config(TrainConfig, FAST)
    tok = IGSMDataModule(cfg_plain.data, cfg_plain.eval, 0).tokenizer.to_dict()
    plain = GPTLitModule(config_to_dict(cfg_plain), tok)
    compiled = GPTLitModule(config_to_dict(load_config(TrainConfig, FAST + ["model.compile=true"])), tok)
    batch = {"inputs": torch.randint(0, 50, (2, 16)), "targets": torch.randint(0, 50, (2, 16))}
    compiled.train_forward(batch["inputs"], batch["targets"]).loss.backward()
    assert compiled._compiled_forward is not None  # compiled, and used
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert all(k.startswith("model.") for k in plain.state_dict())


def test_atomic_checkpoint_io_leaves_no_temp_files(tmp_path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"a": torch.ones(3)}, path)
    io.save_checkpoint({"a": torch.zeros(3)}, path)  # replaces
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    assert torch.equal(torch.load(path)["a"], torch.zeros(3))


def test_ckpt_path_last_without_a_run_fails_before_anything_runs(tmp_path, capsys) -> None:
    assert train.main(FAST + [f"log_root={tmp_path}", "ckpt_path=last"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ckpt_path='last'" in err
    assert not any(tmp_path.iterdir())


def test_ckpt_path_last_picks_the_newest_checkpoint_of_the_newest_version(tmp_path) -> None:
    def touch(path: Path, mtime: float) -> None:  # the smallest file find_resume accepts as a checkpoint
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {}, "hyper_parameters": {"config": {}, "tokenizer": {}},
                    "optimizer_states": [], "loops": {}}, path)
        import os
        os.utime(path, (mtime, mtime))

    run = tmp_path / "r"
    touch(run / "version_0" / "checkpoints" / "last.ckpt", 100)
    touch(run / "version_2" / "checkpoints" / "last.ckpt", 200)
    touch(run / "version_2" / "hpc_ckpt_1.ckpt", 300)  # SLURM's pre-emption save, newer
    (run / "version_3").mkdir()  # a run that died before its first checkpoint
    cfg = load_config(TrainConfig, FAST + [f"log_root={tmp_path}", "name=r", "ckpt_path=last"])
    assert train.find_resume(cfg) == (str(run / "version_2" / "hpc_ckpt_1.ckpt"), 2)
    cfg.ckpt_path = str(run / "version_0" / "checkpoints" / "last.ckpt")
    assert train.find_resume(cfg) == (cfg.ckpt_path, 0)  # a file of this run: its own folder
    cfg.name = "other"
    assert train.find_resume(cfg) == (cfg.ckpt_path, None)  # another run's file: a new folder


def test_auto_precision_is_bf16_only_on_cpus_with_native_bf16(monkeypatch) -> None:
    """On an AVX2-only CPU bf16 is emulated (8x slower than fp32): auto falls back to 32-true there."""
    import igsm.trainer as trainer_module

    cfg = load_config(TrainConfig, FAST)
    assert load_config(TrainConfig, []).trainer.precision is None  # the tiny default asks for auto
    for native, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda native=native: native)
        assert resolve_precision(cfg.trainer) == expected
    cfg.trainer.precision = "bf16-mixed"
    assert resolve_precision(cfg.trainer) == "bf16-mixed"  # an explicit value is kept


def test_the_process_group_is_destroyed_at_exit_while_the_interpreter_is_whole(monkeypatch, tmp_path) -> None:
    """Left to interpreter shutdown, gloo's threads can abort a finished DDP rank (exit status -6,
    "terminate called without an active exception"): build_trainer registers the clean-up once."""
    import atexit

    import torch.distributed as dist

    import igsm.trainer as trainer_module

    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(atexit, "unregister", lambda f: registered.remove(f) if f in registered else None)
    cfg = load_config(TrainConfig, FAST)
    for _ in range(2):
        trainer_module.build_trainer(cfg.trainer, "t", log_root=str(tmp_path), enable_model_summary=False)
    assert registered == [trainer_module.destroy_process_group]

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    trainer_module.destroy_process_group()
    assert not dist.is_initialized()
    trainer_module.destroy_process_group()  # nothing to end: no error


# -- train.py end to end -----------------------------------------------------------------------

def test_train_py_end_to_end_writes_run_folder_and_eval_json(repo_root, one_thread_env, tmp_path) -> None:
    args = [a for a in FAST if not a.startswith("eval.buckets")] + [
        "trainer.max_steps=4", "trainer.checkpoint_every=3", "eval.n=2", "eval.batch_size=2", "name=smoke"]
    r = subprocess.run([sys.executable, str(repo_root / "train.py"), *args], cwd=tmp_path, env=one_thread_env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for noise in ("Tip:", "not supported by the model summary", "LeafSpec"):  # silenced by igsm/quiet.py
        assert noise not in r.stdout + r.stderr
    run = tmp_path / "logs" / "smoke" / "version_0"
    entries = json.loads((run / "eval.json").read_text())
    cfg = load_config(TrainConfig, [])
    assert [e["bucket"] for e in entries] == [parse_bucket(b).label for b in EVAL_BUCKETS["tiny"]]
    assert len(entries) == len(cfg.eval.buckets) and "op<=2" in [e["bucket"] for e in entries]
    for e in entries:
        assert EVAL_FIELDS <= set(e) and e["n"] == 2 and e["step"] == 4
        assert 0 <= e["accuracy"] <= 1 and 0 <= e["answer_accuracy"] <= 1
    by_label = {e["bucket"]: e for e in entries}
    assert by_label["train_op<=2"]["op"] == "<=2" and by_label["train_op<=2"]["split"] == "train"
    assert by_label["op=3"]["op"] == 3 and by_label["op=3"]["split"] == "test"
    assert entries[-1]["reask"] is True and entries[-1]["op"] == 4
    assert sum(line.startswith("eval ") for line in r.stdout.splitlines()) == len(entries)
    # the run folder: resolved config (loadable again), run facts, checkpoints, TensorBoard events
    assert load_config(TrainConfig, [f"config={run / 'config.yaml'}"]).trainer.max_steps == 4
    info = json.loads((run / "run_info.json").read_text())
    assert info["torch"] == torch.__version__ and info["precision"] == resolve_precision(cfg.trainer)
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"step_0000003.ckpt", "last.ckpt"}
    assert list(run.glob("events.out.tfevents.*"))
    # the checkpoint alone rebuilds model, tokenizer and config (what probing needs)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4 and {"config", "tokenizer"} <= set(ckpt["hyper_parameters"])
    module = GPTLitModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert module.cfg.trainer.max_steps == 4 and module.tokenizer.vocab_size == module.model.vocab_size


def test_muon_steps_the_hidden_matrices_and_adamw_the_rest() -> None:
    """optim.name=muon: Muon on every 2-D nn.Linear weight but the tied embedding / output head and
    Canon layers (canon_*: AdamW whatever their shape); both under one optimizer object."""
    cfg = load_config(TrainConfig, FAST + ["optim.name=muon", "optim.muon_lr=0.03", "optim.muon_momentum=0.9"])
    module = GPTLitModule(config_to_dict(cfg), IGSMDataModule(cfg.data, cfg.eval, 0).tokenizer.to_dict())
    block = module.model.blocks[0]
    block.canon_x = torch.nn.Linear(8, 8, bias=False)  # a Canon layer written as a Linear
    block.canon_y = torch.nn.Conv1d(8, 8, 3, groups=8, bias=False)  # [channels, 1, k]
    names = {id(p): n for n, p in module.model.named_parameters()}
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, MuonAdamW)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert list(groups) == ["decay", "no_decay", "muon"]  # AdamW groups first, as with optim.name=adamw
    muon = {names[id(p)] for p in groups["muon"]["params"]}
    linears = {f"{n}.weight" for n, m in module.model.named_modules()
               if isinstance(m, torch.nn.Linear) and "canon" not in n and n != "lm_head"}
    assert muon == linears and all(".c_" in n for n in muon)
    adamw = {names[id(p)] for g in ("decay", "no_decay") for p in groups[g]["params"]}
    assert "wte.weight" in adamw and {n for n in adamw if "canon" in n} == {n for n in names.values() if "canon" in n}
    assert adamw | muon == set(names.values()) and not adamw & muon
    assert groups["muon"]["initial_lr"] == 0.03 and groups["muon"]["momentum"] == 0.9  # peaks of the schedule
    assert groups["muon"]["weight_decay"] == groups["decay"]["weight_decay"] == cfg.optim.weight_decay
    assert groups["no_decay"]["initial_lr"] == cfg.optim.lr and groups["no_decay"]["weight_decay"] == 0.0
    factor = lr_multiplier(0, warmup=cfg.optim.warmup_steps, total=cfg.trainer.max_steps, min_ratio=0.01)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([cfg.optim.lr * factor] * 2 + [0.03 * factor])


def test_muon_adamw_state_dict_round_trips_exactly() -> None:
    """Three steps, save, three more == load the saved state into a fresh optimizer, three more."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Linear(8, 16), torch.nn.LayerNorm(16),
                                torch.nn.Linear(16, 11))
    x = torch.randint(0, 11, (4, 5))

    def build() -> MuonAdamW:
        return build_optimizer(model, param_groups(model, 0.1), load_config(TrainConfig, ["optim.name=muon"]).optim,
                               fused=None)

    def steps(opt: MuonAdamW, n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            model(x).logsumexp(-1).mean().backward()
            opt.step()

    opt = build()
    steps(opt, 3)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    steps(opt, 3)
    straight = copy.deepcopy(model.state_dict())
    model.load_state_dict(saved[0])
    fresh = build()
    fresh.load_state_dict(saved[1])
    steps(fresh, 3)
    assert all(torch.equal(straight[k], v) for k, v in model.state_dict().items())
    assert any("momentum_buffer" in s for s in fresh.state.values())  # Muon's state came back
    assert any("exp_avg" in s for s in fresh.state.values())  # and AdamW's


def test_muon_float32_newton_schulz_is_torchs_update_in_float32() -> None:
    """ns_float32 (CPUs that emulate bf16): torch.optim.Muon's step with the orthogonalisation in
    float32. In bf16, igsm.optim.newton_schulz is torch's own iteration bit for bit; a float32
    step lands where torch's bf16 step does, up to bf16 rounding."""
    zeropower = getattr(torch.optim._muon, "_zeropower_via_newtonschulz", None)
    g = torch.randn(48, 16, generator=torch.Generator().manual_seed(0))
    if zeropower is not None:  # a private torch function: compare only where it exists
        for m in (g, g.T):
            assert torch.equal(newton_schulz(m, dtype=torch.bfloat16), zeropower(m, (3.4445, -4.775, 2.0315), 5, 1e-7))
    torch.manual_seed(0)
    # full-rank gradients: in a rank-deficient one, NS blows bf16's noise in the null space up to ~1
    model = torch.nn.Sequential(torch.nn.Linear(16, 48), torch.nn.Tanh(), torch.nn.Linear(48, 11))
    x = torch.randn(64, 16)
    cfg = load_config(TrainConfig, ["optim.name=muon"]).optim
    start = copy.deepcopy(model.state_dict())
    results = []
    for ns_float32 in (False, True):
        model.load_state_dict(start)
        opt = build_optimizer(model, param_groups(model, 0.1), cfg, fused=None, ns_float32=ns_float32)
        opt.zero_grad()
        model(x).logsumexp(-1).mean().backward()
        opt.step()  # one step from the same weights: the same gradients and momentum
        results.append((copy.deepcopy(model.state_dict()), [s["momentum_buffer"] for s in opt.state.values()
                                                            if "momentum_buffer" in s]))
    (bf16, bufs16), (fp32, bufs32) = results
    assert len(bufs16) == 2 and all(torch.equal(a, b) for a, b in zip(bufs16, bufs32))
    for k in ("0.weight", "2.weight"):  # Muon's matrices: the same update up to bf16's ~1-2%
        moved = (fp32[k] - start[k]).norm()
        assert 0 < (bf16[k] - fp32[k]).norm() < 0.05 * moved
    assert all(torch.equal(bf16[k], fp32[k]) for k in ("0.bias", "2.bias"))  # AdamW's: identical


@pytest.mark.parametrize("ns_float32", [False, True])
def test_muon_adamw_leaves_parameters_without_gradient_untouched(ns_float32) -> None:
    """optim.on_nonfinite=skip sets every gradient to None: no update, no weight decay, either optimizer."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    cfg = load_config(TrainConfig, ["optim.name=muon"]).optim
    opt = build_optimizer(model, param_groups(model, 0.1), cfg, fused=None, ns_float32=ns_float32)
    before = copy.deepcopy(model.state_dict())
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not opt.state


# -- resume ------------------------------------------------------------------------------------

class StopAt(Callback):
    """Ends training after a given optimizer step, as if the job had been killed there."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_from_last_ckpt_continues_the_same_losses(tmp_path, optimizer) -> None:
    """2k steps in one run == k steps, stop, ckpt_path=last, k more: same data, optimizer, schedule."""
    common = FAST + [f"log_root={tmp_path}", "eval.final=false", "optim.lr=1e-2", "optim.warmup_steps=2",
                     f"optim.name={optimizer}",
                     "trainer.accumulate_grad_batches=2", "data.num_workers=1", "trainer.checkpoint_every=3",
                     "trainer.max_steps=6"]
    straight = LossRecorder()
    assert train.main(common + ["name=straight"], extra_callbacks=[straight]) == 0
    first, second = LossRecorder(), LossRecorder()
    assert train.main(common + ["name=resumed"], extra_callbacks=[first, StopAt(3)]) == 0
    assert train.main(common + ["name=resumed", "ckpt_path=last"], extra_callbacks=[second]) == 0
    assert len(straight.losses) == 12 and len(first.losses) == len(second.losses) == 6
    assert first.losses + second.losses == pytest.approx(straight.losses, abs=1e-6)
    assert len(set(straight.losses)) > 6  # the losses do move: the comparison is not vacuous
    runs = sorted(p.name for p in (tmp_path / "resumed").iterdir())
    assert runs == ["version_0"]  # the resumed run wrote into the same version folder
    ckpts = {p.name for p in (tmp_path / "resumed" / "version_0" / "checkpoints").iterdir()}
    assert ckpts == {"step_0000003.ckpt", "step_0000006.ckpt", "last.ckpt"}


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_with_more_steps_follows_the_new_schedule(tmp_path, optimizer) -> None:
    """Extending a finished run (trainer.max_steps 3 -> 6): the lr continues on the 6-step schedule,
    every group from its own peak (optim.lr; optim.muon_lr for Muon's)."""
    common = FAST + [f"log_root={tmp_path}", "eval.final=false", "optim.warmup_steps=1", "name=extend",
                     f"optim.name={optimizer}"]
    assert train.main(common + ["trainer.max_steps=3"]) == 0

    class LrAtStart(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if not hasattr(self, "lrs"):
                self.lrs = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}

    probe = LrAtStart()
    assert train.main(common + ["trainer.max_steps=6", "ckpt_path=last"], extra_callbacks=[probe]) == 0
    cfg = load_config(TrainConfig, common)
    factor = lr_multiplier(3, warmup=1, total=6, min_ratio=cfg.optim.min_lr_ratio)
    assert probe.lrs["no_decay"] == pytest.approx(cfg.optim.lr * factor)
    if optimizer == "muon":
        assert probe.lrs["muon"] == pytest.approx(cfg.optim.muon_lr * factor)


# -- evaluation metrics ------------------------------------------------------------------------

def test_eval_metrics_count_verified_solutions(tmp_path, monkeypatch) -> None:
    cfg = load_config(TrainConfig, FAST + ["eval.n=6", "eval.batch_size=4"])
    monkeypatch.setattr(GPTLitModule, "decode", oracle_decode(cfg, GPTLitModule.decode, first_k=3))
    dm = IGSMDataModule(cfg.data, cfg.eval, seed=cfg.seed)
    module = GPTLitModule(config_to_dict(cfg), dm.tokenizer.to_dict())
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.validate(module, datamodule=dm, verbose=False)
    for e in module.last_eval:
        assert e["n"] == 6
        assert e["accuracy"] == pytest.approx(0.5)  # the 3 oracle answers; the untrained model's are wrong
        assert e["answer_accuracy"] >= 0.5
        assert e["unnecessary_params_per_correct"] == 0.0  # the generator's solutions need every parameter
        assert sum(e["errors"].values()) == 3 and set(e["errors"]) <= set(ERROR_KINDS)  # one kind per wrong one
    assert json.loads((tmp_path / "eval.json").read_text()) == module.last_eval
    assert trainer.callback_metrics["eval/op=2/accuracy"].item() == pytest.approx(0.5)


# -- DDP ---------------------------------------------------------------------------------------

DDP_SCRIPT = """
import sys
sys.path[:0] = [{here!r}, {repo!r}]
import train
from igsm.cli_config import load_config
from igsm.config import TrainConfig
from igsm.lit import GPTLitModule
from test_train import BatchFingerprints, oracle_decode

argv = sys.argv[1:]
GPTLitModule.decode = oracle_decode(load_config(TrainConfig, argv), GPTLitModule.decode)
sys.exit(train.main(argv, extra_callbacks=[BatchFingerprints({out!r})]))
"""


class BatchFingerprints(Callback):
    """Writes (batch index, hash of the inputs) of every training batch to rank<r>.json."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.seen = out_dir, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append([int(batch["index"]), hashlib.sha1(batch["inputs"].numpy().tobytes()).hexdigest()])

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


@pytest.mark.slow
def test_ddp_two_cpu_processes_shard_data_and_sync_metrics(repo_root, one_thread_env, tmp_path, monkeypatch) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(here=str(Path(__file__).parent), repo=str(repo_root),
                                                        out=str(tmp_path))))
    # 3 buckets x 3 batches of 4 prompts: 9 batches, so rank 0 decodes 5 and rank 1 decodes 4
    args = FAST + ["trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=3", "trainer.checkpoint_every=3",
                   "model.canon=AC",  # Canon weights are gradients DDP reduces like any other
                   "eval.n=12", "eval.batch_size=4", "eval.buckets=[2,3,4]", f"log_root={tmp_path / 'logs'}",
                   "name=ddp"]
    r = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=one_thread_env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # each rank trained on its own batches 0, 1, 2; no batch was seen twice
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [i for i, _ in ranks[0]] == [i for i, _ in ranks[1]] == [0, 1, 2]
    assert not {h for _, h in ranks[0]} & {h for _, h in ranks[1]}
    # metrics were summed over the ranks: the oracle answers (index < 4) are one batch per bucket,
    # held by rank 0 for buckets 2 and 4 and by rank 1 for bucket 3; unsynced, rank 0 would say
    # 4/8, 0/4, 4/8
    run = tmp_path / "logs" / "ddp" / "version_0"
    ddp_entries = json.loads((run / "eval.json").read_text())
    assert [e["n"] for e in ddp_entries] == [12, 12, 12]
    assert [e["accuracy"] for e in ddp_entries] == pytest.approx([1 / 3] * 3)
    # one process evaluating the same checkpoint gets the same numbers
    cfg = load_config(TrainConfig, args)
    monkeypatch.setattr(GPTLitModule, "decode", oracle_decode(cfg, GPTLitModule.decode))
    module = GPTLitModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path / "single")
    trainer.validate(module, datamodule=IGSMDataModule(cfg.data, cfg.eval, seed=cfg.seed), verbose=False)
    strip = lambda entries: [{k: v for k, v in e.items() if k != "step"} for e in entries]  # noqa: E731
    assert strip(module.last_eval) == strip(ddp_entries)
