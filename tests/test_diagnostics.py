"""samlib.diagnostics on problems with known answers."""
import math

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
