"""DDP (2 CPU processes, gloo, spawned here), single-process m-sharpness, and mixed precision."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from samlib.distributed import amp_sam_step, m_sharpness_step, sam_step
from samlib.optim import SAM, InfoSAM

STEPS, PER_RANK, WORLD = 4, 4, 2
CASES = [("SAM", "synced"), ("SAM", "local"), ("InfoSAM", "synced"), ("InfoSAM", "local")]
OPTS = {"SAM": (SAM, {}), "InfoSAM": (InfoSAM, {"beta": 0.7})}


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def _data():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, WORLD * PER_RANK, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (STEPS, WORLD * PER_RANK), generator=gen)
    return x, y


def _new_opt(name, params):
    cls, hp = OPTS[name]
    return cls(params, torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9, **hp)


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    x, y = _data()
    results = {}
    for name, mode in CASES:
        model = nn.parallel.DistributedDataParallel(_model())
        opt = _new_opt(name, model.parameters())
        for t in range(STEPS):
            sl = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            sam_step(model, opt, F.cross_entropy, x[t, sl], y[t, sl], mode=mode)
        results[(name, mode)] = ([p.detach().clone() for p in model.parameters()],
                                 [opt.state[p]["m"].clone() for p in model.parameters()] if name == "InfoSAM" else [])
    try:                                              # m_sharpness_step would all-reduce every chunk under DDP
        m_sharpness_step(model, opt, F.cross_entropy, x[0, :PER_RANK], y[0, :PER_RANK], 2)
        results["m_sharpness_under_ddp"] = "ran"
    except ValueError as e:
        results["m_sharpness_under_ddp"] = str(e)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_parameters_identical_across_ranks(ddp_results, case):
    (p0, _), (p1, _) = ddp_results[0][case], ddp_results[1][case]
    for a, b in zip(p0, p1):
        assert torch.equal(a, b)


def _single_process(name, step):
    model = _model()
    opt = _new_opt(name, model.parameters())
    x, y = _data()
    for t in range(STEPS):
        step(model, opt, x[t], y[t])
    return model, opt


@pytest.mark.parametrize("name", ["SAM", "InfoSAM"])
def test_synced_matches_single_process_on_the_concatenated_batch(ddp_results, name):
    model, opt = _single_process(name, lambda m, o, xb, yb: sam_step(m, o, F.cross_entropy, xb, yb))
    params, stats = ddp_results[0][(name, "synced")]
    for a, b in zip(params, model.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12)
    other_rank = ddp_results[1][(name, "synced")][1]
    for a, b, p in zip(stats, other_rank, model.parameters()):   # InfoSAM's statistics: equal on every rank,
        assert torch.equal(a, b)                                  # and equal to single-process InfoSAM's
        torch.testing.assert_close(a, opt.state[p]["m"], rtol=1e-10, atol=1e-12)


def test_local_matches_single_process_m_sharpness(ddp_results):
    model, _ = _single_process("SAM", lambda m, o, xb, yb: m_sharpness_step(m, o, F.cross_entropy, xb, yb, PER_RANK))
    params, _ = ddp_results[0][("SAM", "local")]
    for a, b in zip(params, model.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12)
    synced, _ = ddp_results[0][("SAM", "synced")]
    assert any(not torch.allclose(a, b) for a, b in zip(params, synced))  # the modes really differ


def test_local_infosam_keeps_rank_local_statistics(ddp_results):
    m0, m1 = ddp_results[0][("InfoSAM", "local")][1], ddp_results[1][("InfoSAM", "local")][1]
    assert all(torch.isfinite(a).all() for a in m0 + m1)
    assert any(not torch.equal(a, b) for a, b in zip(m0, m1))  # each rank tracks its own gradients


def test_m_sharpness_with_one_chunk_is_sam():
    x, y = _data()
    a, _ = _single_process("SAM", lambda m, o, xb, yb: m_sharpness_step(m, o, F.cross_entropy, xb, yb, len(xb)))
    b, _ = _single_process("SAM", lambda m, o, xb, yb: sam_step(m, o, F.cross_entropy, xb, yb))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="chunks of m"):
        m_sharpness_step(a, _new_opt("SAM", a.parameters()), F.cross_entropy, x[0], y[0], 3)


def test_m_sharpness_step_rejects_ddp(ddp_results):
    assert "sam_step(..., mode='local')" in ddp_results[0]["m_sharpness_under_ddp"]


class _WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.used, self.unused = nn.Linear(6, 3).double(), nn.Linear(6, 3).double()

    def forward(self, x):
        return self.used(x)


def test_m_sharpness_leaves_parameters_without_gradients_alone():
    """Weight decay and momentum must not move a parameter that got no gradient (as in sam_step)."""
    x, y = _data()
    for step in (lambda m, o: sam_step(m, o, F.cross_entropy, x[0], y[0]),
                 lambda m, o: m_sharpness_step(m, o, F.cross_entropy, x[0], y[0], PER_RANK)):
        net = _WithUnused()
        w0 = net.unused.weight.detach().clone()
        opt = SAM(net.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=0.5)
        step(net, opt)
        step(net, opt)
        assert torch.equal(net.unused.weight, w0)
        assert net.unused.weight not in opt.base_optimizer.state


def test_train_rejects_m_sharpness_under_several_processes(monkeypatch):
    import samlib.distributed
    from samlib.train import TrainConfig, train
    monkeypatch.setattr(samlib.distributed, "world", lambda: (0, 2))
    config = TrainConfig(method="SAM", hparams={"rho": 0.05}, model="small_cnn", model_kwargs={"width": 4}, epochs=1,
                         batch_size=8, device="cpu", m_sharpness=4)
    with pytest.raises(ValueError, match="m_sharpness runs on one process"):
        train(config, (torch.zeros(16, 1, 28, 28), torch.zeros(16, dtype=torch.long)), progress=False)


def test_bad_mode():
    model = _model()
    with pytest.raises(ValueError, match="local"):
        sam_step(model, _new_opt("SAM", model.parameters()), F.cross_entropy, *[t[0] for t in _data()], mode="global")


# ---- mixed precision -----------------------------------------------------------------------

def _float_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))


@pytest.mark.parametrize("name", ["SAM", "InfoSAM"])
def test_fp16_with_grad_scaler_tracks_fp32(name):
    x, y = _data()
    x = x.float()
    ref, amp = _float_model(), _float_model()
    o_ref, o_amp = _new_opt(name, ref.parameters()), _new_opt(name, amp.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    for t in range(STEPS):
        sam_step(ref, o_ref, F.cross_entropy, x[t], y[t])
        _, _, perturbed = amp_sam_step(amp, o_amp, F.cross_entropy, x[t], y[t], scaler=scaler, dtype=torch.float16)
        assert perturbed
    for p, q in zip(ref.parameters(), amp.parameters()):
        torch.testing.assert_close(p, q, rtol=2e-2, atol=2e-3)   # fp16 rounding, not a 1024x scale error
    if name == "InfoSAM":
        for p, q in zip(ref.parameters(), amp.parameters()):
            torch.testing.assert_close(o_ref.state[p]["v"], o_amp.state[q]["v"], rtol=0.1, atol=1e-5)


def test_forced_overflow_skips_perturbation_and_step():
    x, y = _data()
    model = _float_model()
    opt = _new_opt("InfoSAM", model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    amp_sam_step(model, opt, F.cross_entropy, x[0].float(), y[0], scaler=scaler)     # a healthy step
    before = [p.detach().clone() for p in model.parameters()]
    stats = [opt.state[p]["m"].clone() for p in model.parameters()]
    scale = scaler.get_scale()
    huge = x[1].float() * 6e4                                                         # overflows float16
    _, _, perturbed = amp_sam_step(model, opt, F.cross_entropy, huge, y[1], scaler=scaler)
    assert not perturbed
    for p, b, s in zip(model.parameters(), before, stats):
        assert torch.equal(p, b)                                  # the scaler skipped the base step
        assert torch.equal(opt.state[p]["m"], s)                  # running statistics untouched
    assert scaler.get_scale() < scale                             # and the scale backed off
    amp_sam_step(model, opt, F.cross_entropy, x[2].float(), y[2], scaler=scaler)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_amp_step_makes_two_host_syncs_and_one_fused_check():
    """amp_sam_step's docstring: 2 host syncs with a GradScaler (its own first-pass check and GradScaler.step's),
    and the first-pass check is one fused multi-tensor kernel, not per-gradient isfinite calls."""
    from test_optim_perf import CountOps
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(10)])       # 20 gradients
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.01)
    x, y = torch.randn(8, 16), torch.randint(0, 16, (8,))
    scaler = torch.amp.GradScaler("cpu")
    amp_sam_step(model, opt, F.cross_entropy, x, y, scaler=scaler, dtype=torch.bfloat16)
    with CountOps() as c:
        amp_sam_step(model, opt, F.cross_entropy, x, y, scaler=scaler, dtype=torch.bfloat16)
    assert c.ops["_local_scalar_dense"] == 2
    assert c.ops["isfinite"] == 0 and c.ops["abs"] == 0
    assert c.ops["_amp_foreach_non_finite_check_and_unscale_"] == 2     # ours (first pass) + GradScaler.step's
    assert "2 on one device" in amp_sam_step.__doc__
    with CountOps() as c:
        amp_sam_step(model, opt, F.cross_entropy, x, y, scaler=None, dtype=torch.bfloat16)
    assert c.ops["_local_scalar_dense"] == 0


def test_bf16_autocast_without_scaler():
    x, y = _data()
    ref, amp = _float_model(), _float_model()
    o_ref, o_amp = _new_opt("SAM", ref.parameters()), _new_opt("SAM", amp.parameters())
    for t in range(STEPS):
        sam_step(ref, o_ref, F.cross_entropy, x[t].float(), y[t])
        amp_sam_step(amp, o_amp, F.cross_entropy, x[t].float(), y[t], scaler=None, dtype=torch.bfloat16)
    for p, q in zip(ref.parameters(), amp.parameters()):
        torch.testing.assert_close(p, q, rtol=5e-2, atol=1e-2)


# ---- the training loop and the experiment runner at scale ----------------------------------

def test_train_options_m_sharpness_and_amp():
    from samlib.data import load_fashion_mnist
    from samlib.train import TrainConfig, train
    x, y = load_fashion_mnist("train", subset=True)
    base = dict(method="SAM", hparams={"rho": 0.05}, model="small_cnn", model_kwargs={"width": 4}, epochs=1,
                batch_size=32, device="cpu")
    for extra in ({"m_sharpness": 8}, {"amp": "bf16"}, {"amp": "fp16"}):
        r = train(TrainConfig(**base, **extra), (x[:128], y[:128]), progress=False)
        assert 0 <= r["final"]["train_acc"] <= 1 and r["final"]["train_loss"] == r["final"]["train_loss"]
    with pytest.raises(ValueError, match="m_sharpness"):
        TrainConfig(**{**base, "m_sharpness": 5}).validate()
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(**{**base, "amp": "fp8"}).validate()


def test_experiments_under_torchrun(tmp_path):
    import json
    import subprocess
    import sys
    out = tmp_path / "grid"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "samlib.experiments", "grid", "--methods", "SAM:rho=0.05", "--seeds", "0", "--n-train", "160",
           "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--perturbation", "synced", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = list((out / "records").glob("*.json"))
    assert len(records) == 1 and done.stdout.count("grid 'grid'") == 1      # rank 0 alone writes and logs
    record = json.loads(records[0].read_text(encoding="utf-8"))
    assert record["config"]["perturbation"] == "synced"
    cmd[cmd.index("--master_port") + 1] = str(_free_port())
    again = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "record exists, skipped" in again.stdout
