"""samlib's SAM variants against independent implementations written from the original papers or the
authors' official code, never from samlib's own formulas (chapter 03's identifications rest on these).

Each reference below follows its source's arithmetic (read, not copied):

- ASAM: ``SamsungLabs/ASAM``, ``asam.py``: only parameters whose *name* contains ``"weight"`` get the factor
  C^-1 = |w| + eta; every other parameter (biases) has C^-1 = 1; eps = rho C^-2 g / (||C^-1 g|| + 1e-16).
- Fisher-SAM: Kim et al. (ICML 2022), Algorithm 1: f = 1 + eta g^2, eps = gamma f^-1 g / sqrt(g^T f^-1 g).
- SSAM-F: ``Mi-Peng/Sparse-Sharpness-Aware-Minimization``, ``solver/sam.py``: the mask keeps the
  int(N (1 - sparsity)) largest entries of the sum of squared *per-sample* gradients over ``num_samples``
  examples; eps = rho (M * g) / (||g|| + 1e-7), normalized by the unmasked gradient.
- VaSSO: ``BingcongLi/VaSSO``, ``solver/vasso.py``: ema_0 = g_0, ema = (1 - theta) ema + theta g,
  eps = rho ema / (||ema|| + 1e-7).
- Friendly-SAM: ``nblt/F-SAM``, ``utils.py``: m_0 = g_0 and d_0 = g_0; then d = g - sigma m,
  m = lmbda m + (1 - lmbda) g; eps = rho d / (||d|| + 1e-12).

samlib simplifies two of them (the course labels both ``[ours: simplification]``): ASAM scales biases
too, and SSAM's mask comes from an EMA of squared minibatch-mean gradients. The tests pin down exactly
what the difference is.
"""
import pytest
import torch
from torch import nn

from samlib.optim import ASAM, SSAM, FisherSAM, FriendlySAM, PreconditionedSAM, VaSSO

DT = torch.float64


# ---- references, written from the sources above ------------------------------------------------

def asam_official(named_grads, named_params, rho, eta):
    """ASAM's ascent step (official code): T = |w| + eta on parameters named '*weight*', 1 elsewhere."""
    named_params = {name: p.detach() for name, p in named_params.items()}
    scaled = {}
    for name, g in named_grads.items():
        scaled[name] = g * (named_params[name].abs() + eta) if "weight" in name else g.clone()
    norm = torch.norm(torch.stack([s.norm(p=2) for s in scaled.values()]), p=2) + 1e-16
    eps = {}
    for name, s in scaled.items():
        t2s = s * (named_params[name].abs() + eta) if "weight" in name else s
        eps[name] = t2s * (rho / norm)
    return eps


def fisher_sam_alg1(g, gamma, eta):
    """Fisher-SAM, Algorithm 1 of Kim et al. (2022), with the diagonal Fisher f = 1 + eta g^2."""
    f = 1.0 + eta * g * g
    return gamma * (g / f) / torch.sqrt(g @ (g / f))


def ssamf_mask(model, loss_fn, xs, ys, sparsity):
    """SSAM-F's mask: the sum over examples of squared per-sample gradients, top int(N (1 - sparsity))."""
    fisher = [torch.zeros_like(p) for p in model.parameters()]
    for x, y in zip(xs, ys):                              # batch size 1, as in the official update_mask
        model.zero_grad()
        loss_fn(model(x.unsqueeze(0)), y.unsqueeze(0)).backward()
        for f, p in zip(fisher, model.parameters()):
            f += p.grad.square()
    model.zero_grad()
    flat = torch.cat([f.flatten() for f in fisher])
    keep = int(len(flat) * (1 - sparsity))
    mask = torch.zeros_like(flat)
    mask.scatter_(0, torch.topk(flat, keep).indices, 1.0)
    return mask


def ssamf_eps(g, mask, rho):
    """SSAM-F's first step: eps = rho (M * g) / (||g|| + 1e-7): the mask is applied after normalizing."""
    return g * (rho / (g.norm() + 1e-7)) * mask


def vasso_official(grads, rho, theta):
    ema, out = None, []
    for g in grads:
        ema = g.clone() if ema is None else ema * (1 - theta) + theta * g
        out.append(ema * (rho / (ema.norm() + 1e-7)))
    return out


def friendly_sam_official(grads, rho, sigma, lmbda):
    m, out = None, []
    for g in grads:
        if m is None:
            m, d = g.clone(), g.clone()
        else:
            d = g - m * sigma
            m = m * lmbda + g * (1 - lmbda)
        out.append(d * (rho / (d.norm() + 1e-12)))
    return out


# ---- helpers ------------------------------------------------------------------------------------

def samlib_eps(opt):
    """The perturbation a samlib optimizer builds from the .grad already set, flattened."""
    return torch.cat([e.flatten() for _, eps in opt.perturbation() for e in eps])


def cosine(a, b):
    a, b = a.detach(), b.detach()
    return float(a @ b / (a.norm() * b.norm()))


def small_net(bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8, bias=bias), nn.Tanh(), nn.Linear(8, 3, bias=bias)).to(DT)


def set_grads(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 6, generator=gen, dtype=DT), torch.randint(0, 3, (16,), generator=gen)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


# ---- ASAM ---------------------------------------------------------------------------------------

def test_asam_equals_official_code_on_a_model_without_biases():
    model = small_net(bias=False)
    grads = set_grads(model)
    ref = asam_official(grads, dict(model.named_parameters()), rho=0.5, eta=0.01)
    ours = samlib_eps(ASAM(model.parameters(), torch.optim.SGD, rho=0.5, eta=0.01, lr=0.1))
    ref_flat = torch.cat([ref[n].flatten() for n, _ in model.named_parameters()])
    assert torch.allclose(ours, ref_flat, rtol=1e-10, atol=1e-14)


def test_asam_bias_scaling_is_samlibs_simplification():
    """With biases, samlib's eps differs from the official one in exactly this way: on weights the two are
    parallel (only the common norm differs); on biases samlib has an extra factor (|b| + eta)^2."""
    model = small_net(bias=True)
    grads = set_grads(model)
    params = dict(model.named_parameters())
    ref = asam_official(grads, params, rho=0.5, eta=0.01)
    opt = ASAM(model.parameters(), torch.optim.SGD, rho=0.5, eta=0.01, lr=0.1)
    ours = dict(zip(params, [e for _, eps in opt.perturbation() for e in eps]))
    w_names = [n for n in params if "weight" in n]
    b_names = [n for n in params if "weight" not in n]
    assert b_names, "the model must have biases for this test to mean anything"
    ours_w, ref_w = (torch.cat([d[n].flatten() for n in w_names]) for d in (ours, ref))
    assert cosine(ours_w, ref_w) == pytest.approx(1.0, abs=1e-12)
    scale = float(ours_w.norm() / ref_w.norm())                 # the ratio of the two normalizations
    assert abs(scale - 1) > 1e-6                                 # they do differ
    for n in b_names:
        expected = scale * ref[n] * (params[n].detach().abs() + 0.01) ** 2
        assert torch.allclose(ours[n], expected, rtol=1e-9, atol=1e-15)
    full_ours = torch.cat([ours[n].flatten() for n in params])
    full_ref = torch.cat([ref[n].flatten() for n in params])
    assert cosine(full_ours, full_ref) < 1 - 1e-6                  # so the directions differ overall


def test_asam_is_cp_same_direction_as_op_with_t_squared():
    """Chapter 03's proposition on samlib's ASAM: its direction is OP's with P = C^-2, and its radius is
    rho ||C^-2 g|| / ||C^-1 g||."""
    model = small_net(bias=False)
    grads = set_grads(model)
    g = torch.cat([grads[n].flatten() for n, _ in model.named_parameters()])
    T = torch.cat([p.detach().abs().flatten() + 0.01 for p in model.parameters()])
    eps = samlib_eps(ASAM(model.parameters(), torch.optim.SGD, rho=0.5, eta=0.01, lr=0.1))
    op = 0.5 * T * T * g / (T * T * g).norm()
    assert cosine(eps, op) == pytest.approx(1.0, abs=1e-12)
    assert float(eps.norm()) == pytest.approx(0.5 * float((T * T * g).norm() / (T * g).norm()), rel=1e-10)
    assert abs(float(eps.norm()) - 0.5) > 1e-3                   # CP's radius is not rho


# ---- Fisher-SAM ---------------------------------------------------------------------------------

@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0, 50.0])
def test_fisher_sam_equals_algorithm_1(eta):
    model = small_net()
    grads = set_grads(model)
    g = torch.cat([v.flatten() for v in grads.values()])
    ours = samlib_eps(FisherSAM(model.parameters(), torch.optim.SGD, rho=0.1, eta=eta, lr=0.1))
    assert torch.allclose(ours, fisher_sam_alg1(g, 0.1, eta), rtol=1e-10, atol=1e-15)


# ---- SSAM ---------------------------------------------------------------------------------------

def test_ssam_direction_equals_ssamf_when_the_fisher_scores_coincide():
    """With one example, the per-sample Fisher is that example's g^2, which is samlib's first score:
    the masks coincide, the directions are equal, and only the radius differs (||M g|| / ||g||)."""
    model = small_net(bias=False)                                # 72 parameters: half is an integer
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(1, 6, generator=gen, dtype=DT), torch.randint(0, 3, (1,), generator=gen)
    loss_fn = nn.functional.cross_entropy
    mask = ssamf_mask(model, loss_fn, x, y, sparsity=0.5)
    model.zero_grad()
    loss_fn(model(x), y).backward()
    g = torch.cat([p.grad.flatten() for p in model.parameters()])
    ref = ssamf_eps(g, mask, 0.1)
    n = g.numel()
    assert round(0.5 * n) == int(0.5 * n)                        # same count kept (samlib rounds, SSAM-F floors)
    ours = samlib_eps(SSAM(model.parameters(), torch.optim.SGD, rho=0.1, sparsity=0.5, lr=0.1))
    assert torch.equal(ours != 0, mask.bool())
    assert cosine(ours, ref) == pytest.approx(1.0, abs=1e-12)
    assert float(ref.norm()) == pytest.approx(0.1 * float((mask * g).norm() / g.norm()), rel=1e-6)
    assert float(ours.norm()) == pytest.approx(0.1, rel=1e-12)   # samlib: OP radius rho


def test_ssamf_mask_uses_per_sample_gradients():
    """The reference's Fisher score is the sum of squared per-sample gradients (not the squared mean):
    checked against torch.func's per-sample gradients, and shown to differ from the squared mean."""
    from torch.func import functional_call, grad, vmap
    model = small_net()
    gen = torch.Generator().manual_seed(4)
    xs, ys = torch.randn(32, 6, generator=gen, dtype=DT), torch.randint(0, 3, (32,), generator=gen)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, x, y):
        return nn.functional.cross_entropy(functional_call(model, p, (x.unsqueeze(0),)), y.unsqueeze(0))

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, xs, ys)
    fisher = torch.cat([per_sample[k].square().sum(0).flatten() for k in params])
    expected = torch.zeros_like(fisher)
    expected[torch.topk(fisher, int(fisher.numel() * 0.5)).indices] = 1.0
    assert torch.equal(ssamf_mask(model, nn.functional.cross_entropy, xs, ys, 0.5), expected)
    mean_sq = torch.cat([per_sample[k].mean(0).square().flatten() for k in params])
    mean_mask = torch.zeros_like(mean_sq)
    mean_mask[torch.topk(mean_sq, int(mean_sq.numel() * 0.5)).indices] = 1.0
    assert not torch.equal(mean_mask, expected)                  # the two Fisher estimators pick differently


# ---- VaSSO and Friendly-SAM ---------------------------------------------------------------------

def _stream(n_steps=6, dim=40, seed=5):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(dim, generator=gen, dtype=DT)
    return [base + 0.8 * torch.randn(dim, generator=gen, dtype=DT) for _ in range(n_steps)]


def _run_samlib(opt_cls, stream, **kw):
    w = torch.nn.Parameter(torch.zeros(stream[0].numel(), dtype=DT))
    opt = opt_cls([w], torch.optim.SGD, lr=0.1, **kw)
    out = []
    for g in stream:
        w.grad = g.clone()
        out.append(samlib_eps(opt).clone())
    return out


@pytest.mark.parametrize("theta", [0.2, 0.9, 1.0])
def test_vasso_equals_official_code(theta):
    stream = _stream()
    for ours, ref in zip(_run_samlib(VaSSO, stream, rho=0.1, theta=theta), vasso_official(stream, 0.1, theta)):
        assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("sigma,lmbda", [(1.0, 0.9), (0.5, 0.6), (0.0, 0.9)])
def test_friendly_sam_equals_official_code(sigma, lmbda):
    stream = _stream()
    ours_all = _run_samlib(FriendlySAM, stream, rho=0.1, sigma=sigma, lmbda=lmbda)
    for ours, ref in zip(ours_all, friendly_sam_official(stream, 0.1, sigma, lmbda)):
        assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-12)
    if sigma > 0:   # not SAM: the later steps really differ from rho g/||g||
        assert cosine(ours_all[-1], stream[-1]) < 0.99


def test_reference_catches_a_wrong_variant():
    """The references are sharp enough to reject a near miss: an OP variant with P = C^-1 (ASAM's factor once,
    not twice) is not ASAM."""
    class Once(PreconditionedSAM):
        preconditioning = "OP"
        uses_weights = True

        def preconditioner(self, g, w, state, group):
            return w.abs() + 0.01

    model = small_net(bias=False)
    grads = set_grads(model)
    ref = asam_official(grads, dict(model.named_parameters()), rho=0.5, eta=0.01)
    ref_flat = torch.cat([ref[n].flatten() for n, _ in model.named_parameters()])
    wrong = samlib_eps(Once(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1))
    assert cosine(wrong, ref_flat) < 1 - 1e-4
