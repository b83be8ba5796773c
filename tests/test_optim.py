"""samlib.optim against independent computations of each formula, plus the API's guarantees."""
import copy
import warnings

import pytest
import torch
from torch import nn

from samlib.optim import (ASAM, OPTIMIZERS, SAM, SSAM, FisherSAM, FriendlySAM, InfoSAM, InverseVarianceSAM,
                          PreconditionedSAM, VaSSO, frozen_bn_stats)

from optim_reference import LR, MOMENTUM, WD, run_reference

HYPER = {
    "SAM": dict(rho=0.3),
    "ASAM": dict(rho=0.5, eta=0.05),
    "FisherSAM": dict(rho=0.3, eta=2.0),
    "SSAM": dict(rho=0.3, sparsity=0.42, fisher_beta=0.8, mask_interval=2),   # 23 * 0.58 = 13.3: int = round
    "VaSSO": dict(rho=0.3, theta=0.6),
    "FriendlySAM": dict(rho=0.3, sigma=0.7, lmbda=0.8),
    "InfoSAM": dict(rho=0.3, beta=0.7, floor=0.0),
    "InfoSAM-floor": dict(rho=0.3, beta=0.7, floor=0.4),
    "InfoSAM-mean": dict(rho=0.3, beta=0.7, floor=0.1, precondition_mean=True),
    "InfoSAM-previous": dict(rho=0.3, beta=0.7, floor=0.0, gain_from="previous"),
    "InfoSAM-mean-previous": dict(rho=0.3, beta=0.5, floor=0.0, precondition_mean=True, gain_from="previous"),
    "InverseVarianceSAM": dict(rho=0.3, beta=0.7, damping=0.5),
}
CLASSES = {**OPTIMIZERS, "InverseVarianceSAM": InverseVarianceSAM}
SHAPES = [(3, 4), (5,), (2, 1, 3)]
NAMES = ["0.weight", "0.bias", "1.weight"]          # ASAM's official code scales parameters named "weight"
N = sum(torch.Size(s).numel() for s in SHAPES)
# the reference's state names (from the official codes) -> samlib's
STATE_NAMES = {"ema": "d", "momentum": "m", "m": "m", "v": "v", "score": "fisher", "mask": "mask"}


def cls_of(key):
    return CLASSES[key.split("-")[0]]


def all_used(t):
    return set()


def some_unused(t):
    """Parameter 1 joins at step 2 (a layer unfrozen, an expert first routed); parameter 2 sits out step 3."""
    return {1} if t < 2 else ({2} if t == 3 else set())


def make_problem(device, dtype=torch.float64, seed=0, unused=all_used):
    """A nonconvex loss whose 'minibatch' changes every step, so running statistics matter.

    ``loss(t, ws)`` takes one tensor per parameter; the parameters in ``unused(t)`` do not enter
    the loss at step t (their gradient is None). ``grads(t, ws)`` computes the gradients by autograd.
    """
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(8, N, 12, generator=gen, dtype=dtype).div(3).to(device)
    b = torch.randn(8, 12, generator=gen, dtype=dtype).to(device)
    w0 = torch.randn(N, generator=gen, dtype=dtype).to(device)

    def loss(t, ws):
        skip = unused(t)
        w = torch.cat([torch.zeros(x.numel(), dtype=x.dtype, device=x.device) if i in skip else x.flatten()
                       for i, x in enumerate(ws)])
        r = w @ A[t % 8] - b[t % 8]
        return 0.5 * (r * r).sum() + torch.sin(3 * w).sum() + 0.1 * (w ** 4).sum()

    def grads(t, ws):
        ws = [x.detach().clone().requires_grad_(True) for x in ws]
        return list(torch.autograd.grad(loss(t, ws), ws, allow_unused=True))

    return split(w0), loss, grads


def split(w0):
    out, i = [], 0
    for s in SHAPES:
        n = torch.Size(s).numel()
        out.append(w0[i:i + n].clone().view(s))
        i += n
    return out


def make_params(ws0):
    return [nn.Parameter(w.clone()) for w in ws0]


def flat(params):
    return torch.cat([p.detach().flatten() for p in params])


def new_opt(key, params, rho=None, **extra):
    hp = dict(HYPER[key])
    if rho is not None:
        hp["rho"] = rho
    return cls_of(key)(params, torch.optim.SGD, lr=LR, momentum=MOMENTUM, weight_decay=WD, **hp, **extra)


def run_two_step(opt, params, loss, steps, start=0):
    for t in range(start, start + steps):
        loss(t, params).backward()
        opt.first_step(zero_grad=True)
        loss(t, params).backward()
        opt.second_step(zero_grad=True)


@pytest.mark.parametrize("key", list(HYPER))
def test_matches_independent_formula(key, device):
    """Against the official codes' per-parameter loops, with parameters that join late and sit out a step
    (SSAM's top-k is per step over the parameters that have a gradient, so it runs with all of them)."""
    unused = all_used if key == "SSAM" else some_unused
    ws0, loss, grads = make_problem(device, unused=unused)
    params = make_params(ws0)
    opt = new_opt(key, params)
    steps = 6
    ref_traj, ref_state = run_reference(key.split("-")[0], HYPER[key], ws0, grads, steps)
    for t in range(steps):
        run_two_step(opt, params, loss, 1, start=t)
        torch.testing.assert_close(flat(params), torch.cat([w.flatten() for w in ref_traj[t]]),
                                   rtol=1e-10, atol=1e-12, msg=f"{key} step {t}")
    for i, st in ref_state.items():
        for name, value in st.items():
            ours = opt.state[params[i]][STATE_NAMES[name]]
            torch.testing.assert_close(ours.to(value.dtype), value, rtol=1e-10, atol=1e-12, msg=f"{key} {name} {i}")


def test_asam_reproduces_the_official_code_with_unscaled_biases():
    """The official ASAM scales only parameters named "weight"; samlib's "adaptive": False group does the same."""
    ws0, loss, grads = make_problem("cpu")
    params = make_params(ws0)
    groups = [{"params": [p for p, n in zip(params, NAMES) if "weight" in n]},
              {"params": [p for p, n in zip(params, NAMES) if "weight" not in n], "adaptive": False}]
    opt = ASAM(groups, torch.optim.SGD, lr=LR, momentum=MOMENTUM, weight_decay=WD, **HYPER["ASAM"])
    ref_traj, _ = run_reference("ASAM", HYPER["ASAM"], ws0, grads, 4, weight_names=NAMES)
    all_scaled, _ = run_reference("ASAM", HYPER["ASAM"], ws0, grads, 4)
    run_two_step(opt, params, loss, 4)
    official = torch.cat([w.flatten() for w in ref_traj[-1]])
    torch.testing.assert_close(flat(params), official, rtol=1e-10, atol=1e-12)
    assert (official - torch.cat([w.flatten() for w in all_scaled[-1]])).abs().max() > 1e-6   # the choice matters


def test_reference_distinguishes_variants():
    """Guard against a reference that cannot fail: the variants' trajectories really differ."""
    ws0, _, grads = make_problem("cpu", unused=some_unused)
    finals = {k: torch.cat([w.flatten() for w in run_reference(k.split("-")[0], HYPER[k], ws0, grads, 4)[0][-1]])
              for k in HYPER}
    keys = list(finals)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert (finals[a] - finals[b]).abs().max() > 1e-6, (a, b)


@pytest.mark.parametrize("style", ["torch", "davda54"])
@pytest.mark.parametrize("key", list(HYPER))
def test_closure_api_matches_two_step(key, style, device):
    """Both closure idioms give the two-step result exactly: a closure that zeroes the grads (torch), and
    davda54/sam's, which does not and is used after the caller's own backward pass."""
    ws0, loss, _ = make_problem(device)
    p1, p2 = make_params(ws0), make_params(ws0)
    o1, o2 = new_opt(key, p1), new_opt(key, p2)
    run_two_step(o1, p1, loss, 4)
    for t in range(4):
        def closure():
            if style == "torch":
                o2.zero_grad()
            value = loss(t, p2)
            value.backward()
            return value
        if style == "davda54":
            loss(t, p2).backward()          # davda54's README: backward at w, then step(closure)
        value = o2.step(closure)
        assert torch.is_tensor(value) and value.ndim == 0
    assert torch.equal(flat(p1), flat(p2))


def test_closure_returns_loss_at_w():
    ws0, loss, _ = make_problem("cpu")
    params = make_params(ws0)
    opt = new_opt("SAM", params)
    expected = loss(0, params).item()

    def closure():
        value = loss(0, params)
        value.backward()
        return value
    assert opt.step(closure).item() == expected


def test_step_without_closure_says_a_closure_is_required():
    opt = SAM([nn.Parameter(torch.ones(2))], torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="requires a closure"):
        opt.step()


def test_second_step_without_first_step_raises():
    opt = SAM([nn.Parameter(torch.ones(2))], torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="first_step"):
        opt.second_step()


@pytest.mark.parametrize("key", list(HYPER))
def test_state_dict_resume_follows_identical_trajectory(key, device):
    ws0, loss, _ = make_problem(device, unused=some_unused)
    p_full = make_params(ws0)
    o_full = new_opt(key, p_full)
    run_two_step(o_full, p_full, loss, 6)

    p_a = make_params(ws0)
    o_a = new_opt(key, p_a)
    run_two_step(o_a, p_a, loss, 3)
    saved = copy.deepcopy(o_a.state_dict())
    assert set(saved) == {"state", "param_groups"}                          # a plain torch.optim state dict
    assert all("momentum_buffer" in saved["state"][i] for i in (0, 2)), "momentum buffers must be saved"
    p_b = [nn.Parameter(p.detach().clone()) for p in p_a]
    o_b = new_opt(key, p_b, rho=123.0)  # a different rho: the loaded groups must win
    o_b.load_state_dict(saved)
    assert o_b.param_groups is o_b.base_optimizer.param_groups
    assert o_b.param_groups[0]["rho"] == HYPER[key]["rho"]
    run_two_step(o_b, p_b, loss, 3, start=3)
    assert torch.equal(flat(p_b), flat(p_full))


def test_plain_base_optimizer_state_dict_loads_and_keeps_sams_hyperparameters():
    """A torch.optim.SGD checkpoint (switching from SGD to SAM) loads its momentum; rho is kept."""
    p, q = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    sgd = torch.optim.SGD([q], lr=0.3, momentum=0.9)
    q.grad = torch.ones(2)
    sgd.step()
    opt = SAM([p], torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9)
    opt.load_state_dict(sgd.state_dict())
    assert opt.param_groups[0]["rho"] == 0.2 and opt.param_groups[0]["lr"] == 0.3
    assert torch.equal(opt.base_optimizer.state[p]["momentum_buffer"], sgd.state[q]["momentum_buffer"])


@pytest.mark.parametrize("key", list(HYPER))
def test_rho_zero_is_the_base_optimizer_bit_for_bit(key, device):
    ws0, loss, _ = make_problem(device, dtype=torch.float32, unused=some_unused)
    p_sam, p_sgd = make_params(ws0), make_params(ws0)
    opt = new_opt(key, p_sam, rho=0.0)
    run_two_step(opt, p_sam, loss, 5)
    sgd = torch.optim.SGD(p_sgd, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    for t in range(5):
        sgd.zero_grad()
        loss(t, p_sgd).backward()
        sgd.step()
    assert torch.equal(flat(p_sam), flat(p_sgd))


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("key", list(HYPER))
def test_restore_is_exact(key, inplace, device):
    ws0, loss, _ = make_problem(device, dtype=torch.float32)
    params = make_params(ws0)
    opt = new_opt(key, params, inplace=inplace)
    run_two_step(opt, params, loss, 2)
    before = [p.detach().clone() for p in params]
    loss(2, params).backward()
    opt.first_step()
    assert not torch.equal(flat(params), torch.cat([b.flatten() for b in before]))
    opt.restore()
    for p, b in zip(params, before):
        assert torch.equal(p, b)  # bit for bit, not w + eps - eps


def test_second_step_restores_before_the_base_step():
    seen = {}

    class Recorder(torch.optim.Optimizer):
        def __init__(self, params, lr=0.0):
            super().__init__(params, dict(lr=lr))

        def step(self, closure=None):
            seen["w"] = [p.detach().clone() for g in self.param_groups for p in g["params"]]

    p = nn.Parameter(torch.tensor([0.1, 0.2, 0.3]) / 7)
    w = p.detach().clone()
    opt = SAM([p], Recorder, rho=0.37)
    (p.sin() * 3).sum().backward()
    opt.first_step()
    (p ** 3).sum().backward()
    opt.second_step()
    assert torch.equal(seen["w"][0], w)


def test_perturbation_norm_is_rho():
    for key in HYPER:
        ws0, loss, _ = make_problem("cpu")
        params = make_params(ws0)
        opt = new_opt(key, params)
        loss(0, params).backward()
        (_, eps), = opt.perturbation()
        n = torch.cat([e.flatten() for e in eps]).norm()
        if cls_of(key).preconditioning == "OP":  # CP has ||C eps|| = rho instead
            torch.testing.assert_close(n, torch.tensor(HYPER[key]["rho"], dtype=n.dtype))


def test_per_group_rho():
    ws0, loss, grads = make_problem("cpu")
    params = make_params(ws0)
    opt = SAM([{"params": params[:1], "rho": 0.2}, {"params": params[1:]}], torch.optim.SGD, rho=0.0, lr=LR)
    assert [g["rho"] for g in opt.param_groups] == [0.2, 0.0]
    g = torch.cat([x.flatten() for x in grads(0, ws0)])
    w0 = torch.cat([w.flatten() for w in ws0])
    loss(0, params).backward()
    opt.first_step()
    n0 = params[0].numel()
    torch.testing.assert_close(flat(params)[:n0], w0[:n0] + 0.2 * g[:n0] / g.norm())  # global norm
    assert torch.equal(flat(params)[n0:], w0[n0:])


def test_lr_scheduler_acts_on_shared_groups():
    p = nn.Parameter(torch.ones(3))
    opt = SAM([p], torch.optim.SGD, rho=0.1, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()" warning
        for _ in range(3):
            (p * p).sum().backward()
            opt.first_step(zero_grad=True)
            (p * p).sum().backward()
            opt.second_step(zero_grad=True)
            sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.125
    sched_base = torch.optim.lr_scheduler.CosineAnnealingLR(opt.base_optimizer, T_max=4)
    (p * p).sum().backward()
    opt.first_step(zero_grad=True)
    (p * p).sum().backward()
    opt.second_step(zero_grad=True)
    sched_base.step()
    assert opt.param_groups[0]["lr"] == opt.base_optimizer.param_groups[0]["lr"] != 0.125


@pytest.mark.parametrize("key", list(HYPER))
def test_zero_gradient_gives_zero_perturbation(key, device):
    params = [nn.Parameter(torch.randn(4, 3, device=device)), nn.Parameter(torch.randn(5, device=device))]
    opt = new_opt(key, params)
    before = flat(params)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.first_step()
    assert torch.equal(flat(params), before)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("key", list(HYPER))
def test_non_finite_gradient_perturbs_nothing_finite_and_restores_exactly(key, bad, device):
    """A non-finite norm gives eps = 0 wherever the gradient is finite; only the non-finite gradient's own
    coordinate is non-finite at w + eps (as in every per-parameter SAM), and w comes back bit for bit."""
    params = [nn.Parameter(torch.randn(4, 3, device=device)), nn.Parameter(torch.randn(5, device=device))]
    opt = new_opt(key, params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.first_step()  # one healthy step first, so running statistics exist
    opt.second_step(zero_grad=True)
    before = flat(params)
    for p in params:
        p.grad = torch.randn_like(p)
    params[1].grad[2] = bad
    opt.first_step()
    bad_index = params[0].numel() + 2
    finite = torch.ones_like(before, dtype=torch.bool)
    finite[bad_index] = False
    assert torch.equal(flat(params)[finite], before[finite])
    assert not torch.isfinite(flat(params)[bad_index])
    opt.restore()
    assert torch.equal(flat(params), before)


BAD_INPUTS = [
    (SAM, dict(rho=-0.1), "rho"),
    (ASAM, dict(eta=-1.0), "eta"),
    (FisherSAM, dict(eta=-1.0), "eta"),
    (VaSSO, dict(theta=1.5), "theta"),
    (VaSSO, dict(theta=-0.1), "theta"),
    (FriendlySAM, dict(sigma=-1.0), "sigma"),
    (FriendlySAM, dict(lmbda=1.0), "lmbda"),
    (SSAM, dict(sparsity=1.0), "sparsity"),
    (SSAM, dict(fisher_beta=1.0), "fisher_beta"),
    (SSAM, dict(mask_interval=0), "mask_interval"),
    (InfoSAM, dict(beta=1.0), "beta"),
    (InfoSAM, dict(beta=-0.5), "beta"),
    (InfoSAM, dict(floor=1.5), "floor"),
    (InfoSAM, dict(floor=-0.1), "floor"),
    (InverseVarianceSAM, dict(damping=0.0), "damping"),
    (InverseVarianceSAM, dict(beta=1.0), "beta"),
]


@pytest.mark.parametrize("cls,kwargs,name", BAD_INPUTS, ids=[f"{c.__name__}-{n}" for c, _, n in BAD_INPUTS])
def test_bad_hyperparameters_name_the_parameter_and_range(cls, kwargs, name):
    with pytest.raises(ValueError, match=rf"Invalid {name}: .*{name} must"):
        cls([nn.Parameter(torch.ones(2))], torch.optim.SGD, lr=0.1, **kwargs)


def test_bad_per_group_rho_is_rejected():
    with pytest.raises(ValueError, match="Invalid rho"):
        SAM([{"params": [nn.Parameter(torch.ones(2))], "rho": -1.0}], torch.optim.SGD, lr=0.1)


def test_base_optimizer_must_be_a_class():
    p = nn.Parameter(torch.ones(2))
    with pytest.raises(TypeError, match="optimizer class"):
        SAM([p], torch.optim.SGD([p], lr=0.1))


def test_every_variant_is_a_short_subclass_of_one_base():
    import inspect
    for cls in CLASSES.values():
        assert issubclass(cls, PreconditionedSAM)
        code = [ln for ln in inspect.getsource(cls).splitlines() if ln.strip()]
        doc = inspect.getdoc(cls) or ""
        assert len(code) - len(doc.splitlines()) <= 45, cls.__name__


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_frozen_bn_stats_uses_batch_stats_and_leaves_running_stats():
    model = _bn_model().train()
    x = torch.randn(16, 1, 8, 8)
    bn = model[1]
    bn.running_mean.fill_(3.0)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    out_free = model(x)
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        assert not torch.equal(bn.state_dict()[k], before[k])  # the normal pass does update them
    bn.load_state_dict(before)
    with frozen_bn_stats(model):
        out_frozen = model(x)
    torch.testing.assert_close(out_frozen, out_free)  # batch statistics, same output
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert bn.track_running_stats  # restored afterwards
    model(x)
    assert not torch.equal(bn.running_mean, before["running_mean"])


def test_frozen_bn_stats_restores_on_error():
    model = _bn_model().train()
    with pytest.raises(ZeroDivisionError):
        with frozen_bn_stats(model):
            1 / 0
    assert model[1].track_running_stats


def test_eval_mode_inside_frozen_bn_stats_still_uses_running_stats():
    model = _bn_model().eval()
    x = torch.randn(4, 1, 8, 8)
    expected = model(x)
    with frozen_bn_stats(model):
        torch.testing.assert_close(model(x), expected)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("key", list(HYPER))
def test_steps_make_no_host_sync_on_cuda(key):
    w0, loss_of_flat, _ = make_problem("cuda", dtype=torch.float32)
    params = make_params(w0)
    opt = new_opt(key, params)
    if key.startswith("SSAM"):
        pytest.skip("SSAM's top-k mask update is a documented periodic exception")
    run_two_step(opt, params, loss_of_flat, 1)
    for t in range(1, 3):
        loss_of_flat(t, torch.cat([p.flatten() for p in params])).backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.first_step(zero_grad=True)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        loss_of_flat(t, torch.cat([p.flatten() for p in params])).backward()
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.second_step(zero_grad=True)
        finally:
            torch.cuda.set_sync_debug_mode(0)


def test_parameters_gaining_and_losing_gradients():
    a, b, c = (nn.Parameter(torch.randn(3, 2)) for _ in range(3))
    opt = InfoSAM([a, b, c], torch.optim.SGD, rho=0.1, lr=0.1)
    for with_grad in ([a, b], [a, c], [a, b, c], [c]):
        has_grad = {id(p) for p in with_grad}
        before = {id(p): p.detach().clone() for p in (a, b, c)}
        for p in (a, b, c):
            p.grad = torch.randn_like(p) if id(p) in has_grad else None
        opt.first_step()
        for p in (a, b, c):
            moved = not torch.equal(p, before[id(p)])
            assert moved == (id(p) in has_grad)    # only parameters with a gradient are perturbed
        opt.second_step(zero_grad=True)
        assert all(torch.isfinite(p).all() for p in (a, b, c))
