"""samlib.diagnostics on problems with known answers."""
import importlib.util
import json
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from samlib import diagnostics as G
from samlib.models import SmallCNN


def quadratic(device, eigs=(5.0, 2.0, 1.0, 0.5, -0.25), seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=gen, dtype=torch.float64))
    A = (q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T).to(device)
    w = torch.randn(len(eigs), generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
    return A, w, (lambda: 0.5 * w @ A @ w)


def test_hvp_is_exact_on_a_quadratic(device):
    A, w, loss = quadratic(device)
    v = torch.randn(5, dtype=torch.float64, device=device)
    (hv,) = G.hvp(loss, [w], [v])
    torch.testing.assert_close(hv, A @ v)


def test_top_eigenvalue_by_power_iteration(device):
    A, w, loss = quadratic(device)
    eig, (vec,) = G.top_hessian_eigenvalue(loss, [w], iters=500, tol=1e-12)
    assert eig == pytest.approx(5.0, rel=1e-6)
    torch.testing.assert_close(A @ vec, 5.0 * vec, atol=1e-5, rtol=1e-5)


def test_hutchinson_trace_is_unbiased(device):
    _, w, loss = quadratic(device, eigs=(3.0, 1.0, 1.0, 0.5, 0.5))
    mean, stderr = G.hessian_trace(loss, [w], samples=400)
    assert abs(mean - 6.0) < 4 * stderr + 1e-9 and stderr > 0


def test_sam_sharpness_against_brute_force_on_2d():
    A = torch.tensor([[3.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    w = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)

    def loss():
        return 0.5 * w @ A @ w + torch.sin(w).sum()
    rho = 0.5
    out = G.sam_sharpness(loss, [w], rho, ascent_steps=200, step_size=0.01)
    with torch.no_grad():
        base = float(loss())
        # the max of a smooth function over the ball: on the boundary here (checked on a fine grid)
        best = -math.inf
        for r in torch.linspace(0, rho, 51, dtype=torch.float64):
            for t in torch.linspace(0, 2 * math.pi, 721, dtype=torch.float64):
                e = r * torch.stack([torch.cos(t), torch.sin(t)])
                x = w + e
                best = max(best, float(0.5 * x @ A @ x + torch.sin(x).sum()) - base)
    g = A @ w.detach() + torch.cos(w.detach())
    assert out["linear"] == pytest.approx(rho * float(g.norm()))
    assert out["first_order"] <= out["ascent"] <= best + 1e-9
    assert out["ascent"] == pytest.approx(best, abs=2e-4)
    assert torch.equal(w.detach(), torch.tensor([0.3, -0.2], dtype=torch.float64))  # restored


def test_gradient_noise_matches_closed_form_for_least_squares():
    torch.manual_seed(0)
    n, d, batch = 400, 3, 16
    X = torch.randn(n, d, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + torch.randn(n, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.2, 0.1, -0.3]]))

    def mse(pred, target, reduction="mean"):
        return F.mse_loss(pred.squeeze(1), target, reduction=reduction)
    out = G.gradient_noise(model, X, y, batch, n_batches=3000, replacement=True, loss=mse)
    r = X @ model.weight.detach().squeeze() - y
    per_example = 2 * r[:, None] * X                       # gradient of (x^T w - y)^2
    full = per_example.mean(0)
    var_of_mean = per_example.var(0, unbiased=False) / batch
    torch.testing.assert_close(out["full"], full)
    torch.testing.assert_close(out["var"], var_of_mean, rtol=0.12, atol=0)
    torch.testing.assert_close(out["mean"], full, atol=4 * float(var_of_mean.max() / 3000) ** 0.5, rtol=0)
    ratio = G.snr(out["mean"], out["var"])
    assert ratio.shape == (d,) and (ratio > 0).all()


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    model = SmallCNN(width=4).double()
    x = torch.rand(256, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (256,))
    return model, x, y


def test_adversary_alignment_full_batch_is_the_full_adversary(small_net):
    model, x, y = small_net
    out = G.adversary_alignment(model, x, y, "SAM", rho=0.05, batch_size=len(x), n_batches=2, warmup=0)
    torch.testing.assert_close(out["cos"], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(out["ascent"], torch.full((2,), out["full_ascent"], dtype=torch.float64))


@pytest.mark.parametrize("method", ["SAM", "InfoSAM", "VaSSO", "ASAM"])
def test_adversary_alignment_minibatch(small_net, method):
    model, x, y = small_net
    before = [p.detach().clone() for p in model.parameters()]
    out = G.adversary_alignment(model, x, y, method, rho=0.05, batch_size=16, n_batches=4, warmup=3)
    assert out["cos"].shape == (4,) and (out["cos"] < 1).all() and (out["cos"] > -1).all()
    assert out["full_ascent"] > 0
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b) and p.grad is None


def test_adversary_alignment_rejects_unknown_method(small_net):
    model, x, y = small_net
    with pytest.raises(ValueError, match="Unknown method"):
        G.adversary_alignment(model, x, y, "Adam")


def test_filter_normalized_direction(small_net):
    model, _, _ = small_net
    d = G.filter_normalized_direction(model, seed=0)
    for p, t in zip(model.parameters(), d):
        if p.dim() <= 1:
            assert not t.any()
        else:
            torch.testing.assert_close(t.view(t.shape[0], -1).norm(dim=1), p.detach().view(p.shape[0], -1).norm(dim=1))


def test_slices_restore_weights_and_hit_the_loss_at_zero(small_net):
    model, x, y = small_net
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    loss = G.data_loss(model, x, y)
    d1, d2 = G.filter_normalized_direction(model, 1), G.filter_normalized_direction(model, 2)
    line = G.loss_slice_1d(loss, params, d1, [-0.5, 0.0, 0.5])
    grid = G.loss_slice_2d(loss, params, d1, d2, [0.0, 0.5], [0.0, 0.5])
    with torch.no_grad():
        at_w = float(loss())
    assert line[1] == pytest.approx(at_w) and grid[0, 0] == pytest.approx(at_w)
    assert grid[1, 0] == pytest.approx(float(line[2]))
    for p, b in zip(params, before):
        assert torch.equal(p, b)


def test_layer_noise_splits_by_parameter(small_net):
    model, x, y = small_net
    noise = G.gradient_noise(model, x, y, batch_size=32, n_batches=5)
    layers = G.layer_noise(model, noise)
    assert [l["name"] for l in layers] == [n for n, _ in model.named_parameters()]
    assert sum(l["size"] for l in layers) == noise["mean"].numel()


# ---- BatchNorm modes, and the adversary's rho -------------------------------------------------

def _bn_buffers(model):
    return [b.detach().clone() for b in model.buffers()]


def test_train_mode_evaluations_leave_batchnorm_statistics_alone(small_net):
    model, x, y = small_net
    before, was = _bn_buffers(model), model.training
    G.flat_grad(G.data_loss(model, x, y, train_mode=True), list(model.parameters()))
    G.gradient_noise(model, x, y, batch_size=32, n_batches=3, train_mode=True)
    G.adversary_alignment(model, x, y, "SAM", batch_size=32, n_batches=2, warmup=1, train_mode=True)
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_buffers(model)))
    assert model.training == was                     # the mode is restored too


def test_train_mode_full_batch_adversary_is_the_full_adversary(small_net):
    # with B = N in train mode, the minibatch sees the full data's batch statistics: g_B = g (any order)
    model, x, y = small_net
    out = G.adversary_alignment(model, x, y, "SAM", rho=0.05, batch_size=len(x), n_batches=2, warmup=0,
                                train_mode=True)
    torch.testing.assert_close(out["cos"], torch.ones(2, dtype=torch.float64))
    # and train mode differs from eval mode (batch statistics are not the running ones)
    eval_out = G.adversary_alignment(model, x, y, "SAM", rho=0.05, batch_size=len(x), n_batches=1, warmup=0)
    assert abs(eval_out["loss"] - out["loss"]) > 1e-3


def test_adversary_alignment_accepts_rho_in_hparams(small_net):
    model, x, y = small_net
    a = G.adversary_alignment(model, x, y, "InfoSAM", hparams={"rho": 0.02, "beta": 0.8}, batch_size=32,
                              n_batches=2, warmup=2)
    b = G.adversary_alignment(model, x, y, "InfoSAM", hparams={"beta": 0.8}, rho=0.02, batch_size=32,
                              n_batches=2, warmup=2)
    c = G.adversary_alignment(model, x, y, "InfoSAM", hparams={"beta": 0.8}, rho=0.05, batch_size=32,
                              n_batches=2, warmup=2)
    torch.testing.assert_close(a["ascent"], b["ascent"])
    assert a["full_ascent"] == b["full_ascent"] != c["full_ascent"]


# ---- the first-/second-order split ---------------------------------------------------------------

def test_ascent_decomposition_is_exact_on_a_quadratic(device):
    A, w, loss = quadratic(device)
    eps = torch.randn(5, dtype=torch.float64, device=device) * 0.3
    out = G.ascent_decomposition(loss, [w], [eps])
    wd = w.detach()
    assert out["first_order"] == pytest.approx(float(wd @ A @ eps), rel=1e-10)
    assert out["second_order"] == pytest.approx(float(0.5 * eps @ A @ eps), rel=1e-10)
    assert out["actual"] == pytest.approx(out["quadratic"], rel=1e-9, abs=1e-12)


def test_ascent_decomposition_remainder_is_the_cubic_term():
    w = torch.tensor([0.4, -0.7], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([1.5, -2.0], dtype=torch.float64)

    def loss():
        return (c * w ** 3).sum() / 6 + (w ** 2).sum()
    eps = torch.tensor([0.1, 0.05], dtype=torch.float64)
    out = G.ascent_decomposition(loss, [w], [eps])
    assert out["remainder"] == pytest.approx(float((c * eps ** 3).sum() / 6), rel=1e-8)
    assert torch.equal(w.detach(), torch.tensor([0.4, -0.7], dtype=torch.float64))


# ---- the design space, from formulas -----------------------------------------------------------

def test_design_space_by_hand_on_a_scalar_stream():
    beta = 0.5
    space = G.DesignSpace(beta)
    d0 = space.step(torch.tensor([2.0], dtype=torch.float64))
    assert all(float(d) == 2.0 for d in d0.values())              # m_0 = g_0, v_0 = 0: every gain is 1
    d1 = space.step(torch.tensor([0.0], dtype=torch.float64))
    # v_1 = 0.5 * (0 - 2)^2 = 2, m_1 = 1; gains: g-before 1 (v_0 = 0), g-current 1/(1+2) = 1/3
    assert float(space.v) == 2.0 and float(space.m) == 1.0
    assert float(d1["g"]) == 0.0 and float(d1["m"]) == 1.0
    assert float(space.gains["g*P_current"]) == pytest.approx(1 / 3)
    assert float(d1["m*P_current"]) == pytest.approx(1 / (1 + 2 / 3))   # noise of the mean: v (1-b)/(1+b) = 2/3
    d2 = space.step(torch.tensor([4.0], dtype=torch.float64))
    # before: m_1 = 1, v_1 = 2 -> 1/3; current: v_2 = 0.5*2 + 0.5*(4-1)^2 = 5.5, m_2 = 2.5 -> 6.25/11.75
    assert float(d2["g*P_before"]) == pytest.approx(4 / 3)
    assert float(d2["g*P_current"]) == pytest.approx(4 * 6.25 / 11.75)
    assert float(d2["m*P_before"]) == pytest.approx(2.5 * 1 / (1 + 2 / 3))
    assert float(d2["m*P_current"]) == pytest.approx(2.5 * 6.25 / (6.25 + 5.5 / 3))


def _samlib_direction(opt, w, g):
    w.grad = g.clone()
    (_, (eps,)), = opt.perturbation()
    return eps.clone()


def _unit(t):
    return t / t.norm()


def test_design_space_matches_sam_vasso_and_infosam_default():
    from samlib.optim import SAM, InfoSAM, VaSSO
    gen = torch.Generator().manual_seed(3)
    g_true = torch.randn(40, generator=gen, dtype=torch.float64)
    stream = [g_true + 2 * torch.randn(40, generator=gen, dtype=torch.float64) for _ in range(25)]
    beta = 0.85
    w = torch.nn.Parameter(torch.zeros(40, dtype=torch.float64))
    opts = {"g": SAM([w], torch.optim.SGD, rho=0.1, lr=0.0),
            "m": VaSSO([w], torch.optim.SGD, rho=0.1, theta=1 - beta, lr=0.0),
            "g*P_current": InfoSAM([w], torch.optim.SGD, rho=0.1, beta=beta, lr=0.0)}
    space = G.DesignSpace(beta)
    for g in stream:
        dirs = space.step(g)
        for key, opt in opts.items():
            torch.testing.assert_close(_samlib_direction(opt, w, g), 0.1 * _unit(dirs[key]), rtol=1e-10, atol=1e-14)


def _infosam_accepts(name):
    import inspect
    from samlib.optim import InfoSAM
    return name in inspect.signature(InfoSAM.__init__).parameters


@pytest.mark.skipif(not _infosam_accepts("gain_from"), reason="InfoSAM(gain_from=...) not merged yet")
@pytest.mark.parametrize("gain_from", ["current", "previous"])
@pytest.mark.parametrize("precondition_mean", [False, True])
def test_design_space_matches_infosam_options(gain_from, precondition_mean):
    from samlib.optim import InfoSAM
    gen = torch.Generator().manual_seed(4)
    g_true = torch.randn(30, generator=gen, dtype=torch.float64) * torch.linspace(2, 0.05, 30, dtype=torch.float64)
    stream = [g_true + torch.randn(30, generator=gen, dtype=torch.float64) for _ in range(20)]
    w = torch.nn.Parameter(torch.zeros(30, dtype=torch.float64))
    opt = InfoSAM([w], torch.optim.SGD, rho=0.1, beta=0.9, gain_from=gain_from,
                  precondition_mean=precondition_mean, lr=0.0)
    key = ("m" if precondition_mean else "g") + ("*P_current" if gain_from == "current" else "*P_before")
    space = G.DesignSpace(0.9)
    for g in stream:
        d = space.step(g)[key]
        torch.testing.assert_close(_samlib_direction(opt, w, g), 0.1 * _unit(d), rtol=1e-10, atol=1e-14)


# ---- the noise estimate: bias, warm-up, drift --------------------------------------------------

def _ema_stream(gs, beta):
    space = G.DesignSpace(beta)
    for g in gs:
        space.step(g)
    return space.v


@pytest.mark.parametrize("t", [1, 5, 20, 150])
def test_expected_v_after_a_warm_up_matches_simulation(t):
    beta, sigma2, streams = 0.9, 1.7, 40_000
    gen = torch.Generator().manual_seed(t)
    gs = 0.3 + sigma2 ** 0.5 * torch.randn(t + 1, streams, generator=gen, dtype=torch.float64)
    v = _ema_stream(gs, beta)
    se = float(v.std()) / streams ** 0.5
    assert abs(float(v.mean()) - sigma2 * G.expected_v_ratio(beta, t)) < 4 * se
    if t == 150:
        assert G.expected_v_ratio(beta, t) == pytest.approx(2 / (1 + beta), rel=1e-6)


def test_drift_inflates_v_by_the_squared_lag():
    # g_t = a t + xi_t: m lags by a beta/(1-beta), so the innovation has mean a/(1-beta) and
    # E v -> 2 sigma^2/(1+beta) + a^2/(1-beta)^2 (derived in chapter 06)
    beta, sigma2, a, streams, steps = 0.9, 1.0, 0.05, 20_000, 300
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(steps, dtype=torch.float64)[:, None]
    gs = a * t + torch.randn(steps, streams, generator=gen, dtype=torch.float64)
    v = _ema_stream(gs, beta)
    predicted = 2 * sigma2 / (1 + beta) + a ** 2 / (1 - beta) ** 2
    assert float(v.mean()) == pytest.approx(predicted, rel=0.02)
    assert G.noise_inflation(v, torch.full_like(v, sigma2)) == pytest.approx(predicted / sigma2, rel=0.02)
    assert predicted / sigma2 > 1.2      # the drift is visible: not the stationary 1.05


def test_participation_ratio():
    e = torch.zeros(100, dtype=torch.float64)
    e[:7] = -3.0
    assert G.participation_ratio(e) == pytest.approx(7.0)
    assert G.participation_ratio(torch.randn(50_000, dtype=torch.float64)) == pytest.approx(50_000 / 3, rel=0.05)


# ---- fixed-weights design-space study -----------------------------------------------------------

def _least_squares(n=512, d=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64) + torch.randn(n, generator=gen, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.2, 0.1, -0.3, 0.4]]))

    def mse(pred, target, reduction="mean"):
        return F.mse_loss(pred.squeeze(1), target, reduction=reduction)
    return model, X, y, mse


def test_design_space_alignment_full_batch_is_exact():
    model, X, y, mse = _least_squares()
    # (inverse variance is left out: with v at rounding level, 1/v amplifies rounding noise)
    out = G.design_space_alignment(model, X, y, rho=0.1, batch_size=len(X), n_streams=3, warmup=4, loss=mse,
                                   oracle_batches=0, inverse_variance=())
    assert set(out["cos"]) == set(G.DESIGN_SPACE)
    for name, cos in out["cos"].items():
        torch.testing.assert_close(cos, torch.ones(3, dtype=torch.float64))
        torch.testing.assert_close(out["ascent"][name], torch.full((3,), out["full_ascent"], dtype=torch.float64))


def test_design_space_alignment_inflation_at_fixed_weights_is_the_stationary_prediction():
    model, X, y, mse = _least_squares()
    out = G.design_space_alignment(model, X, y, rho=0.1, batch_size=16, n_streams=300, warmup=20, loss=mse,
                                   oracle_batches=4000, inverse_variance=())
    infl = out["inflation"]
    assert out["expected_inflation"] == pytest.approx(G.expected_v_ratio(0.9, 20))
    assert abs(float(infl.mean()) - out["expected_inflation"]) < 4 * float(infl.std()) / len(infl) ** 0.5 + 0.01
    # all 4 coordinates carry signal here, so the oracle gain helps SAM's direction on average
    assert float(out["cos"]["g*P_oracle"].mean()) > float(out["cos"]["g"].mean())


# ---- in-training probe ----------------------------------------------------------------------------

def _probe_data(n=256):
    torch.manual_seed(0)
    x = (torch.rand(n, 1, 28, 28) * 255).to(torch.uint8)
    y = torch.randint(0, 10, (n,))
    return x, y


@pytest.mark.parametrize("method,hparams", [("SGD", {}), ("SAM", {"rho": 0.05}), ("InfoSAM", {"rho": 0.05})])
def test_train_with_probe_reproduces_train_bit_for_bit(method, hparams):
    from samlib.train import TrainConfig, train
    x, y = _probe_data()
    cfg = dict(method=method, hparams=hparams, model_kwargs={"width": 4}, epochs=2, batch_size=64, lr=0.05,
               device="cpu", seed=1)
    ref = train(TrainConfig(**cfg), (x, y), progress=False)["model"]
    out = G.train_with_probe(TrainConfig(**cfg), (x, y), probe={"every": 3, "inflation_at": [5], "curvature_at": [6],
                                                                "inflation_batches": 4})
    for a, b in zip(ref.state_dict().values(), out["model"].state_dict().values()):
        assert torch.equal(a, b)
    probe = out["probe"]
    assert [r["step"] for r in probe.records] == [0, 3, 6]
    assert len(probe.inflation) == 1 and len(probe.curvature) == 1
    rec = probe.records[1]
    assert set(rec["cos"]) == set(G.DESIGN_SPACE)
    assert set(rec["layer_mean_P"]) == {n for n, _ in out["model"].named_parameters()}
    summary = probe.summary(phases=1)
    assert summary[0]["cos_minus_sam"]["g"] == (0.0, 0.0)


def test_probe_with_the_full_batch_sees_the_full_gradient():
    from samlib.train import TrainConfig
    x, y = _probe_data(128)
    cfg = TrainConfig(method="InfoSAM", hparams={"rho": 0.05}, model_kwargs={"width": 4}, epochs=4, batch_size=128,
                      lr=0.05, device="cpu")
    probe = G.train_with_probe(cfg, (x, y), probe={"every": 1})["probe"]
    for rec in probe.records:               # g_t is the full-batch gradient (shuffled order, same statistics)
        assert rec["cos"]["g"] == pytest.approx(1.0, abs=1e-5)
        assert rec["ascent"]["g"] == pytest.approx(rec["ascent"]["full"], rel=1e-4, abs=1e-7)
    assert probe.records[0]["cos"]["m"] == pytest.approx(1.0, abs=1e-5)   # m_0 = g_0
    assert probe.records[-1]["cos"]["m"] < 0.999                          # later, m lags the moving gradient


def test_probe_inflation_is_v_over_the_fixed_weights_variance():
    # lr = 0: the weights never move. Stop right after the checkpoint, so the probe's v is v at that
    # step; recompute the fixed-weights variance with the same batches and compare.
    from samlib.train import TrainConfig
    x, y = _probe_data(512)
    cfg = TrainConfig(method="SGD", model_kwargs={"width": 4}, epochs=1, batch_size=16, lr=0.0, device="cpu",
                      steps_per_epoch=31)
    out = G.train_with_probe(cfg, (x, y), probe={"every": 10_000, "inflation_at": [30], "inflation_batches": 20,
                                                 "ascent": False})
    probe, model = out["probe"], out["model"]
    (rec,) = probe.inflation
    noise = G.gradient_noise(model, G.to_float(x), y, 16, 20, seed=30, train_mode=True)
    assert rec["inflation"] == pytest.approx(float(probe.space.v.sum() / noise["var"].sum()), rel=1e-6)
    assert rec["expected_stationary"] == pytest.approx(2 / 1.9)


# ---- the chapters' committed measurements -------------------------------------------------------

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "chapters" / "results"


def _shape(obj):
    """The structure of a JSON value: dict keys (recursively), list element structure, leaf types."""
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items() if k not in ("settings", "environment", "command")}
    if isinstance(obj, list):
        return ["list", _shape(obj[0])] if obj and isinstance(obj[0], (dict, list)) else "list"
    if obj is None or isinstance(obj, (int, float)):
        return "number"
    return type(obj).__name__


def _run_script(path, args):
    spec = importlib.util.spec_from_file_location(f"results_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(args)


@pytest.mark.parametrize("folder,part,output", [("05_gradient_noise", None, "results.json"),
                                                ("06_infosam", "design_space", "design_space.json"),
                                                ("06_infosam", "in_training", "in_training.json")])
def test_committed_results_have_the_structure_the_script_writes(tmp_path, folder, part, output):
    """Regenerate in quick mode (tiny settings) and compare with the committed standard-mode file.

    Full regeneration: ``OMP_NUM_THREADS=1 python chapters/results/<folder>/make_results.py [part]``."""
    script = RESULTS / folder / "make_results.py"
    _run_script(script, ([part] if part else []) + ["--quick", "--out", str(tmp_path)])
    fresh = json.loads((tmp_path / output).read_text(encoding="utf-8"))
    committed = json.loads((RESULTS / folder / output).read_text(encoding="utf-8"))
    assert _shape(fresh) == _shape(committed)
    assert committed["command"] == fresh["command"].replace(" --quick", "")
    assert committed["settings"] == json.loads(json.dumps(_settings(script)))   # made with the standard settings


def _settings(script):
    spec = importlib.util.spec_from_file_location("settings_probe", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SETTINGS["standard"]
