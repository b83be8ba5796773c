"""The toy problems of chapters 01–02: closed forms against autograd, vectorized runs against the plain loop,
the critical points of the 2-D loss, and the claims the chapters and widgets rest on."""
import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import hessian

from samlib import toy


def _autograd(fn, x):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(fn(x).sum(), x)[0]


@pytest.mark.parametrize("sharp_width", [0.05, 0.15, 0.4])
def test_two_wells_grad_matches_autograd(sharp_width):
    x = torch.linspace(-3, 3, 2001, dtype=torch.float64)
    auto = _autograd(lambda v: toy.two_wells(v, sharp_width), x)
    assert torch.allclose(toy.two_wells_grad(x, sharp_width), auto, atol=1e-12, rtol=0)


def test_two_wells_barrier_is_the_local_maximum():
    xb = toy.two_wells_barrier()
    x = torch.tensor([xb - 1e-3, xb, xb + 1e-3], dtype=torch.float64)
    vals = toy.two_wells(x)
    assert vals[1] > vals[0] and vals[1] > vals[2]
    assert abs(float(toy.two_wells_grad(torch.tensor(xb, dtype=torch.float64)))) < 1e-2   # grid step 1e-4
    assert -1 < xb < 1.5


def test_gibbs_share_limits_and_an_independent_integral():
    xb = toy.two_wells_barrier()
    # very hot: the density is flat on [-3, 3], so the share is the basin's length
    assert abs(toy.two_wells_gibbs_share(1e6) - (xb + 3) / 6) < 1e-3
    # cold: the deeper (sharp) well takes everything
    assert toy.two_wells_gibbs_share(0.005) > 0.999
    # a separate integration (trapezoid, a different grid) at a moderate temperature
    tau = 0.2
    x = np.linspace(-3, 3, 200_001)
    dens = np.exp(-toy.two_wells(torch.from_numpy(x)).numpy() / tau)
    left = x < xb
    share = np.trapezoid(dens[left], x[left]) / np.trapezoid(dens, x)
    assert abs(toy.two_wells_gibbs_share(tau) - share) < 2e-3
    with pytest.raises(ValueError, match="temperature"):
        toy.two_wells_gibbs_share(0.0)


def test_noisy_gd_landing_without_noise_keeps_each_start_in_its_basin():
    # a small step keeps GD in the basin it starts in, so the share is the share of starts left of the barrier
    runs, seed = 400, 3
    starts = np.random.default_rng(seed).random(runs) * 5 - 2.5
    out = toy.noisy_gd_landing(0.0, lr=0.01, steps=300, runs=runs, seed=seed)
    assert out["sharp"] == pytest.approx(float((starts < out["barrier"]).mean()))
    assert out["sharp"] + out["flat"] == pytest.approx(1.0)
    assert out["temperature"] == 0.0


def test_noisy_gd_landing_vectorized_settings():
    noise = torch.tensor([0.0, 3.0, 3.0], dtype=torch.float64)
    lr = torch.tensor([0.05, 0.05, 0.01], dtype=torch.float64)
    out = toy.noisy_gd_landing(noise, lr=lr, steps=2000, runs=300, seed=0)
    assert out["x"].shape == (3, 300) and out["sharp"].shape == (3,)
    assert torch.allclose(out["temperature"], lr * noise ** 2 / 2)
    assert out["sharp"][1] < out["sharp"][0] - 0.15          # noise empties the sharp basin at eta = 0.05
    again = toy.noisy_gd_landing(noise, lr=lr, steps=2000, runs=300, seed=0)
    assert torch.equal(out["x"], again["x"])                  # seeded
    with pytest.raises(ValueError, match="noise and lr"):
        toy.noisy_gd_landing(torch.zeros(2, 2), runs=4, steps=1)


def test_two_basins_2d_grad_matches_autograd():
    w = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1.5
    assert torch.allclose(toy.two_basins_2d_grad(w), _autograd(toy.two_basins_2d, w), atol=1e-12, rtol=0)


def test_critical_points_of_the_2d_loss():
    pts = toy.two_basins_2d_critical_points()
    for name, pt in pts.items():
        assert toy.two_basins_2d_grad(pt["w"]).norm() < 1e-12, name
        assert torch.allclose(torch.linalg.eigvalsh(hessian(toy.two_basins_2d, pt["w"])), pt["eigenvalues"])
    saddle = pts["saddle"]
    assert torch.allclose(saddle["w"], torch.tensor([-0.4468, 0.0592], dtype=torch.float64), atol=1e-4)
    assert torch.allclose(saddle["eigenvalues"], torch.tensor([-4.367, 0.839], dtype=torch.float64), atol=1e-3)
    assert (pts["sharp"]["eigenvalues"] > 27).all() and (pts["wide"]["eigenvalues"] < 2).all()
    pts["saddle"]["w"][0] = 0.0                               # callers get copies
    assert toy.two_basins_2d_critical_points()["saddle"]["w"][0] < -0.4


@pytest.mark.parametrize("normalize", [True, False])
def test_sam_runs_equals_the_autograd_trajectory(normalize):
    # the same iteration with closed-form gradients; SAM's bouncing is chaotic, so compare the first 100 steps
    auto = toy.sam_trajectory(0.3, 0.05, steps=100, normalize=normalize)
    fast = toy.sam_runs(0.3, 0.05, steps=100, normalize=normalize)[:, 0]
    assert torch.allclose(auto, fast, atol=1e-8, rtol=0)


def test_sam_runs_per_run_radius_noise_and_decay():
    rhos = torch.tensor([0.0, 0.1, 0.3], dtype=torch.float64)
    many = toy.sam_runs(rhos, 0.05, steps=50, runs=3)
    for i, r in enumerate(rhos.tolist()):
        assert torch.allclose(many[:, i], toy.sam_trajectory(r, 0.05, steps=50), atol=1e-9, rtol=0)
    a = toy.sam_runs(0.3, 0.05, steps=20, runs=4, noise=1.0, seed=5)
    assert torch.equal(a, toy.sam_runs(0.3, 0.05, steps=20, runs=4, noise=1.0, seed=5))
    assert not torch.equal(a[:, 0], a[:, 1])                  # independent noise per run
    # a linearly decaying radius: by hand, rho_t = rho (1 - t/T)
    T, w = 30, torch.tensor([-0.7, 0.1], dtype=torch.float64)
    for t in range(T):
        g = toy.two_basins_2d_grad(w)
        w = w - 0.05 * toy.two_basins_2d_grad(w + 0.3 * (1 - t / T) * g / g.norm())
    assert torch.allclose(toy.sam_runs(0.3, 0.05, steps=T, rho_decay=True)[-1, 0], w, atol=1e-12)


def test_sam_is_caught_by_the_saddle_in_every_window():
    # chapter 02's claim, checked with time-averages over windows (no lucky step count)
    saddle = toy.two_basins_2d_critical_points()["saddle"]["w"]
    sam = toy.sam_runs(0.3, 0.05, steps=3000)[:, 0]
    step = (sam[1:] - sam[:-1]).norm(dim=1)
    for a in range(500, 3000, 500):
        assert (sam[a:a + 500].mean(0) - saddle).norm() < 0.1
        assert step[a:a + 500].min() > 2e-3
    usam = toy.sam_runs(0.3, 0.05, steps=600, normalize=False)[-1, 0]
    assert (usam - saddle).norm() < 1e-12                     # USAM converges to it exactly


def test_dual_norm_error_names_the_tie():
    with pytest.raises(ValueError, match="tie"):
        toy.dual_norm_perturbation(torch.ones(3), 1.0, 1.0)
    g = torch.tensor([0.8, -0.3, 0.5], dtype=torch.float64)
    for p in (1.5, 2.0, 4.0):
        eps = toy.dual_norm_perturbation(g, 0.5, p)
        q = p / (p - 1)
        assert float(torch.linalg.vector_norm(eps, p)) == pytest.approx(0.5)
        assert float(g @ eps) == pytest.approx(0.5 * float(torch.linalg.vector_norm(g, q)))


def test_widget_defaults_show_what_the_chapters_describe():
    from samlib import widgets as W

    land = W.WIDGETS["landscape"]
    defaults = {k: s.default for k, s in land.sliders.items()}
    at_default = land.compute(**defaults)
    without_noise = land.compute(**{**defaults, "noise": 0.0})
    assert at_default["sharp"] < without_noise["sharp"] - 0.2  # chapter 01: noise empties the sharp basin
    assert math.isfinite(at_default["gibbs_sharp"]) and without_noise["gibbs_sharp"] is None

    sam2d = W.WIDGETS["sam2d"]
    res = sam2d.compute(**{k: s.default for k, s in sam2d.sliders.items()})
    pts = toy.two_basins_2d_critical_points()
    assert (res["sam_mean"] - pts["saddle"]["w"]).norm() < 0.1   # chapter 02: SAM bounces around the saddle
    assert (res["gd"][-1] - pts["sharp"]["w"]).norm() < 1e-6     # while GD converges to the sharp minimum
