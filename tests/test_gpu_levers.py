"""Issue 28's review of the GPU path, on CPU: precision resolution (auto picks bf16 only where a GPU
has bf16 tensor cores; probe.py resolves it as train.py does), clipping on unscaled float16
gradients, host syncs of the probe's steps, and resumes across device counts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from igsm.cli_config import config_to_dict, load_config
from igsm.config import ModelConfig, ProbeConfig, TrainConfig
from igsm.model import GPT
from probing.run import build_controls

FAST = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=128", "data.context=128",
        "data.batch_size=2", "data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=1",
        "trainer.strategy=auto"]


# -- precision: auto, and probe.py's controls --------------------------------------------------------

@pytest.mark.parametrize("capability, expected", [((9, 0), "bf16-mixed"), ((8, 0), "bf16-mixed"),
                                                  ((7, 5), "16-mixed"), ((7, 0), "16-mixed")])
def test_auto_precision_on_a_gpu_is_bf16_only_with_bf16_tensor_cores(monkeypatch, capability, expected) -> None:
    """H100 (9.0) and A100 (8.0): bf16-mixed; T4 (7.5) and V100 (7.0) have fp16 tensor cores only:
    16-mixed. Fails if auto picks bf16 on every CUDA device."""
    import igsm.trainer as trainer_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cfg = load_config(TrainConfig, ["trainer.accelerator=gpu"])
    assert cfg.trainer.precision is None
    assert trainer_module.resolve_precision(cfg.trainer) == expected
    cfg.trainer.precision = "32-true"
    assert trainer_module.resolve_precision(cfg.trainer) == "32-true"  # an explicit value is kept


@pytest.mark.parametrize("resolved, bf16", [("bf16-mixed", True), ("32-true", False), ("16-mixed", False)])
def test_probe_controls_use_the_precision_train_py_resolves(monkeypatch, resolved, bf16) -> None:
    """trainer.precision null (the default) resolves through igsm.trainer.resolve_precision, as in
    train.py: the solved-split decoding and the positive-control fine-tuning run in bf16 exactly
    when the probes do. Fails with the old ``str(precision).startswith("bf16")`` (False for null)."""
    import igsm.trainer as trainer_module
    import probing.controls as controls

    monkeypatch.setattr(trainer_module, "resolve_precision", lambda cfg: resolved)
    seen = []
    monkeypatch.setattr(controls, "solved_flags", lambda *a, bf16, **k: seen.append(("solved", bf16)) or [True])
    monkeypatch.setattr(controls, "finetune_positive", lambda *a, bf16, **k: seen.append(("positive", bf16)))
    cfg = load_config(ProbeConfig, ["trainer.accelerator=cpu", "probe.tasks=[nece]", "probe.split_by_solved=true",
                                    "probe.positive_control=true"])
    assert cfg.trainer.precision is None
    backbone = SimpleNamespace(model=torch.nn.Linear(1, 1), tokenizer=None,
                               train_config=SimpleNamespace(eval=SimpleNamespace(fresh_letters=False)))
    datamodule = SimpleNamespace(test_split_stream=lambda: ("test", "probe"), solved=None, train_ops=lambda: None)
    build_controls(cfg, backbone, None, datamodule)
    assert seen == [("solved", bf16), ("positive", bf16)]


# -- clipping under 16-mixed ---------------------------------------------------------------------------

def test_clipping_under_float16_acts_on_unscaled_gradients() -> None:
    """With a GradScaler and fused AdamW (which unscales inside its step, so Lightning does not
    unscale before clipping), configure_gradient_clipping logs and clips the true gradient norm,
    and the scaler's step then applies the same update as an unscaled run. Fails without the
    unscale: the logged norm is the loss scale times too large, and clipping shrinks the update."""
    from igsm.data import IGSMDataModule
    from igsm.lit import GPTLitModule

    cfg = load_config(TrainConfig, FAST + ["optim.grad_clip=1.0"])
    tokenizer = IGSMDataModule(cfg.data, cfg.eval, 0).tokenizer.to_dict()
    batch = torch.randint(0, 100, (2, 17))
    runs = []
    for scale in (None, 2.0 ** 12):
        torch.manual_seed(0)
        module = GPTLitModule(config_to_dict(cfg), tokenizer)
        logged = {}
        module.log = lambda name, value, logged=logged, **k: logged.__setitem__(name, float(value))
        optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-2, fused=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=scale) if scale else None
        module._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler), world_size=1)
        loss = module.model(batch[:, :-1].contiguous(), batch[:, 1:].contiguous()).loss
        (scaler.scale(loss) if scaler else loss).backward()
        module.configure_gradient_clipping(optimizer)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        runs.append((logged["train/grad_norm"], [p.detach().clone() for p in module.model.parameters()]))
    (norm, weights), (scaled_norm, scaled_weights) = runs
    assert norm > 1.0  # the clip acts
    assert scaled_norm == pytest.approx(norm, rel=1e-4)
    for a, b in zip(weights, scaled_weights):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


# -- two gloo ranks under a faked SLURM: the requeue signal mid-step, barriers and host syncs per step -

RANK_SCRIPT = r'''
"""One rank of a 2-process train.py run started as SLURM would (tests/test_gpu_levers.py)."""
import json, os, signal, sys
from collections import Counter

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, os.environ["REPO_ROOT"])
import train

RANK = int(os.environ["SLURM_PROCID"])
WINDOWS: list[Counter] = []  # per training batch: the calls counted from its start to the next one's


def caller() -> str:
    """The file (repo-relative for ours) of the code outside torch that made the call."""
    frame = sys._getframe(2)
    while frame is not None and os.sep + "torch" + os.sep in frame.f_code.co_filename:
        frame = frame.f_back
    if frame is None:
        return "?"
    name = frame.f_code.co_filename
    ours = name.startswith(os.environ["REPO_ROOT"])
    return "ours:" + os.path.relpath(name, os.environ["REPO_ROOT"]) if ours else os.path.basename(name)


def counted(kind, original):
    def wrapper(*args, **kwargs):
        if WINDOWS:
            WINDOWS[-1][kind] += 1
            WINDOWS[-1][f"{kind}@{caller()}"] += 1
        return original(*args, **kwargs)
    return wrapper


for name in ("barrier", "all_reduce", "broadcast"):
    setattr(dist, name, counted(name, getattr(dist, name)))
for name, kind in (("item", "host_sync"), ("tolist", "host_sync"), ("__bool__", "host_sync")):
    setattr(torch.Tensor, name, counted(kind, getattr(torch.Tensor, name)))


class Signals(Callback):
    """SIGUSR1 in the middle of step 3 (global_step 2 done): rank 0 between forward and backward,
    rank 1 just before the optimizer step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        WINDOWS.append(Counter(step=trainer.global_step + 1))

    def on_before_backward(self, trainer, pl_module, loss):
        if RANK == 0 and trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if RANK == 1 and trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_train_end(self, trainer, pl_module):
        out = os.path.join(os.environ["OUT_DIR"], f"rank{RANK}.json")
        with open(out, "w") as f:
            json.dump([dict(w) for w in WINDOWS], f)


sys.exit(train.main(sys.argv[1:], extra_callbacks=[Signals()]))
'''

CHECK_EVERY = 4  # trainer.log_every_n_steps: the steps the ranks agree on their signal flags
DDP_STEPS = 8


@pytest.fixture(scope="module")
def slurm_ddp_run(repo_root, subprocess_env, tmp_path_factory):
    """Two train.py ranks started as SLURM starts them (SLURM_* variables, gloo on CPU, Lightning's
    auto-requeue on), each getting SIGUSR1 at a different point inside step 3. Returns (run folder,
    per rank the counts of each training batch). A hang fails here, at the timeout."""
    import json
    import socket
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("slurm_ddp")
    script = tmp / "rank.py"
    script.write_text(RANK_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {k: v for k, v in subprocess_env.items()
            if not k.startswith(("SLURM_", "MASTER_", "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK"))}
    base.update(REPO_ROOT=str(repo_root), OUT_DIR=str(tmp), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port), SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_NNODES="1",
                SLURM_NODEID="0", SLURM_JOB_ID="4242", SLURM_JOB_NAME="igsm_test")
    args = FAST + ["trainer.devices=2", "trainer.strategy=ddp", f"trainer.max_steps={DDP_STEPS}",
                   f"trainer.log_every_n_steps={CHECK_EVERY}", "trainer.checkpoint_every=100",
                   "trainer.eval_every=null", "eval.final=false", "trainer.enable_progress_bar=false",
                   "trainer.precision=32-true", "data.batch_size=4", f"log_root={tmp / 'logs'}", "name=slurm"]
    procs = [subprocess.Popen([sys.executable, str(script), *args], cwd=repo_root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=dict(base, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)))
             for r in range(2)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=180)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail("the two ranks hung (a collective paired with another rank's other collective)")
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-4000:]
    counts = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]
    return tmp / "logs" / "slurm" / "version_0", counts


@pytest.mark.slow
def test_slurm_requeue_signal_mid_step_saves_at_an_agreed_step_boundary(slurm_ddp_run) -> None:
    """The ranks receive SIGUSR1 at different points of step 3; the hpc checkpoint is written once,
    by both ranks at the end of step 4 (the next agreed step), and its step, loop counters and
    optimizer state agree. Fails (a hang, or a checkpoint taken mid-step) when Lightning saves from
    inside its signal handler."""
    run, _ = slurm_ddp_run
    hpc = sorted(run.glob("hpc_ckpt_*.ckpt"))
    assert [p.name for p in hpc] == ["hpc_ckpt_1.ckpt"]
    ckpt = torch.load(hpc[0], map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == CHECK_EVERY
    progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert progress["ready"] == progress["processed"] == CHECK_EVERY  # saved after the batch, not inside it
    steps = {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert steps == {CHECK_EVERY}  # every parameter's optimizer state is that of step 4
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == DDP_STEPS  # training went on after the requeue checkpoint, as Lightning's


@pytest.mark.slow
def test_a_ddp_training_step_has_no_barrier_and_one_host_sync_of_ours(slurm_ddp_run) -> None:
    """Per optimizer step between the agreed steps: no barrier, one all-reduce (the token share, no
    barrier before it), one host read in igsm's code (the finiteness check) and none for the stop
    decision. Fails with the token share through ``strategy.reduce`` (a barrier first) and a stop
    decision agreed every step (``reduce_boolean_decision``: a barrier, an all-reduce, a bool()).
    Not ours, so not asserted: Lightning 2.6 broadcasts rank 0's SIGTERM flag every batch and reads
    it (one broadcast, one host read), and on CPU the unfused AdamW reads its step counters (CPU
    tensors; the fused CUDA kernel reads none)."""
    _, counts = slurm_ddp_run
    for windows in counts:
        assert [w["step"] for w in windows] == list(range(1, DDP_STEPS + 1))
        for w in windows[1:]:  # the first step sets things up
            ours = {k: v for k, v in w.items() if "@ours:" in k}
            if w["step"] % CHECK_EVERY == 0:  # the agreement (an all-reduce and a read), the requeue save, logging
                assert w.get("barrier", 0) <= (2 if w["step"] == CHECK_EVERY else 0), w
                assert ours.get("all_reduce@ours:igsm/faults.py", 0) <= 1
                continue
            assert w.get("barrier", 0) == 0 and w.get("all_reduce", 0) == 1, w
            assert list(ours) == ["all_reduce@ours:igsm/lit.py", "host_sync@ours:igsm/lit.py"], w
            assert ours["host_sync@ours:igsm/lit.py"] == 1, w
            assert not any(k.startswith("host_sync@ddp.py") for k in w), w  # no bool() of a stop decision


# -- the probe's per-step host syncs, and warnings of a resume on another device count --------------

def test_label_counts_take_no_bincount_and_no_host_read(monkeypatch) -> None:
    """The majority control's label histogram without torch.bincount (whose output size depends on
    the largest label: a host sync on CUDA) and without reading a value back. Fails with bincount."""
    from probing.vprobe import ClassCounts

    def refuse(*args, **kwargs):
        raise AssertionError("a host read")

    monkeypatch.setattr(torch, "bincount", refuse)
    counts = ClassCounts(3)
    label = torch.tensor([0, 2, 2, 1, 2, 0])
    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__bool__"):
            m.setattr(torch.Tensor, name, refuse)
        counts.update(label)
        counts.update(label[:2])
    assert counts.counts.tolist() == [3, 1, 4]


def test_length_chunks_read_the_ends_before_the_batch_leaves_the_host(monkeypatch) -> None:
    """With length_chunks > 1 the chunks' lengths come from ``end_host``, the ends read on the CPU
    before Lightning moves the batch (on_before_batch_transfer): the same logits as reading them
    from the tensor, and no host read in the step. Fails when logits() reads ``end`` itself."""
    from probing.vprobe import VProbe, chunk_lengths

    torch.manual_seed(0)
    gpt = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64), 50)
    module = VProbe(gpt, ["nece"], control="none", length_chunks=3)
    end = torch.tensor([5, 20, 7, 7, 31, 12, 3, 20])
    idx = torch.randint(0, 50, (8, 32))
    batch = module.on_before_batch_transfer({"nece": {"idx": idx, "end": end, "label": end % 2}}, 0)
    assert batch["nece"]["end_host"] == end.tolist()
    expected = module.logits("trained", "nece", idx, end)

    def refuse(*args, **kwargs):
        raise AssertionError("a host read")

    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "tolist", refuse)
        got = module.logits("trained", "nece", idx, end, batch["nece"]["end_host"])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    for n in range(1, 12):  # tensor_split's chunk maxima, ties included
        ends = torch.randint(0, 6, (n,))
        for k in range(1, n + 1):
            chunks = torch.tensor_split(torch.sort(ends).values, k)
            assert chunk_lengths(ends.tolist(), k) == [int(c.max()) + 1 for c in chunks]


@pytest.mark.parametrize("rank, warned", [("0", True), ("1", False)])
def test_a_resume_with_changed_settings_warns_on_rank_zero_only(monkeypatch, capsys, rank, warned) -> None:
    """Every DDP rank reads the checkpoint and config before training starts; a probe or training
    run resumed on another device count names the change once (rank 0), not once per rank."""
    from igsm.faults import warn_changed_settings

    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LOCAL_RANK", rank)
    warn_changed_settings({"trainer": {"devices": 4}}, {"trainer": {"devices": 2}}, set())
    err = capsys.readouterr().err
    assert ("trainer.devices: 2 -> 4" in err) == warned and err.count("\n") == int(warned)


# -- a Muon checkpoint from another torch version ---------------------------------------------------------

def test_a_muon_checkpoint_of_another_torch_version_resumes(tmp_path) -> None:
    """A checkpoint as another torch writes it: its param groups lack hyper-parameters this torch's
    Muon and AdamW read (an older torch: AdamW's decoupled_weight_decay came with 2.7) and hold one
    it does not know (a newer torch). Resuming fills the missing ones with this torch's defaults and
    steps on. Fails without: torch's load_state_dict replaces the groups, and MuonAdamW's inner
    optimizers then miss the keys (a KeyError at the first step)."""
    import train

    common = FAST + ["model.n_head=2", "optim.name=muon", "eval.final=false", "trainer.checkpoint_every=2",
                     "trainer.enable_progress_bar=false", "trainer.precision=32-true", f"log_root={tmp_path}",
                     "name=m"]
    assert train.main(common + ["trainer.max_steps=2"]) == 0
    last = tmp_path / "m" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert "muon" in {g["name"] for g in groups} and len(groups) >= 2  # Muon and AdamW groups
    for group in groups:
        for key in ("decoupled_weight_decay", "amsgrad", "adjust_lr_fn", "ns_coefficients", "nesterov"):
            group.pop(key, None)
        group["a_key_of_a_newer_torch"] = 1
    torch.save(ckpt, last)
    assert train.main(common + ["trainer.max_steps=4", "ckpt_path=last"]) == 0
    resumed = torch.load(last, map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 4
    muon = next(g for g in resumed["optimizer_states"][0]["param_groups"] if g["name"] == "muon")
    assert muon["nesterov"] is True and "adjust_lr_fn" in muon  # this torch's defaults
