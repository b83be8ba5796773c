r"""Small problems that make one idea visible: toy landscapes, closed-form perturbations, simulations.

Everything here is a pure function of its arguments (seeded where random), so the chapters' widgets
are thin wrappers over it and the tests can sweep it.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["two_wells", "two_wells_grad", "two_wells_curvatures", "two_wells_barrier", "two_wells_gibbs_share",
           "noisy_gd_landing", "two_basins_2d", "two_basins_2d_grad", "two_basins_2d_critical_points",
           "sam_trajectory", "sam_runs", "dual_norm_perturbation", "cp_perturbation", "op_perturbation",
           "wiener_gain", "expected_ascent_ratio", "NonconvexProblem", "presam_sgd", "synthetic_alignment",
           "exact_sam_path"]


# ---- chapter 01: a sharp and a flat minimum -------------------------------------------------

def two_wells(x: Tensor, sharp_width: float = 0.15, flat_width: float = 0.6, depth_sharp: float = 1.0,
              depth_flat: float = 0.9) -> Tensor:
    r"""A 1-D loss with a sharp well at :math:`x=-1` and a flat one at :math:`x=+1.5`:

    .. math:: L(x) = 1 - a\,e^{-(x+1)^2/(2 s_1^2)} - b\,e^{-(x-1.5)^2/(2 s_2^2)} + 0.02 x^2.
    """
    return (1 - depth_sharp * torch.exp(-(x + 1) ** 2 / (2 * sharp_width ** 2))
            - depth_flat * torch.exp(-(x - 1.5) ** 2 / (2 * flat_width ** 2)) + 0.02 * x ** 2)


def two_wells_grad(x: Tensor, sharp_width: float = 0.15, flat_width: float = 0.6, depth_sharp: float = 1.0,
                   depth_flat: float = 0.9) -> Tensor:
    r"""The derivative of :func:`two_wells` in closed form (no autograd, so long simulations are cheap):

    .. math:: L'(x) = a\,\tfrac{x+1}{s_1^2}e^{-(x+1)^2/(2s_1^2)} + b\,\tfrac{x-1.5}{s_2^2}e^{-(x-1.5)^2/(2s_2^2)} + 0.04x.
    """
    return _two_wells_grad(x, sharp_width, flat_width, depth_sharp, depth_flat, torch.exp)


def _two_wells_grad(x, sharp_width, flat_width, depth_sharp, depth_flat, exp):
    return (depth_sharp * (x + 1) / sharp_width ** 2 * exp(-(x + 1) ** 2 / (2 * sharp_width ** 2))
            + depth_flat * (x - 1.5) / flat_width ** 2 * exp(-(x - 1.5) ** 2 / (2 * flat_width ** 2))
            + 0.04 * x)


def two_wells_curvatures(sharp_width: float = 0.15, flat_width: float = 0.6) -> tuple[float, float]:
    r"""Leading-order curvature :math:`L''` of each well: :math:`a/s_1^2` and :math:`b/s_2^2` (plus 0.04)."""
    return 1.0 / sharp_width ** 2 + 0.04, 0.9 / flat_width ** 2 + 0.04


def _wells_grid(sharp_width: float) -> tuple[Tensor, Tensor]:
    x = torch.linspace(-3, 3, 60001, dtype=torch.float64)
    return x, two_wells(x, sharp_width)


def two_wells_barrier(sharp_width: float = 0.15) -> float:
    """The top of the barrier between the two wells (the local maximum of :func:`two_wells` between them),
    to 1e-4. Everything left of it is the sharp well's basin, everything right of it the flat one's."""
    x, loss = _wells_grid(sharp_width)
    inside = (x > -1) & (x < 1.5)
    return float(x[inside][loss[inside].argmax()])


def two_wells_gibbs_share(temperature: float, sharp_width: float = 0.15) -> float:
    r"""Share of the Gibbs density :math:`\propto e^{-L(x)/\tau}` on :math:`[-3, 3]` that lies in the sharp
    well's basin (left of :func:`two_wells_barrier`): where noisy gradient descent with temperature
    :math:`\tau = \eta\sigma^2/2` spends its time once it has forgotten its start (for small :math:`\eta`)."""
    if not temperature > 0:
        raise ValueError(f"Invalid temperature: {temperature!r}. It must be > 0 (tau = lr * noise**2 / 2).")
    x, loss = _wells_grid(sharp_width)
    weight = torch.exp(-(loss - loss.min()) / temperature)
    return float(weight[x < two_wells_barrier(sharp_width)].sum() / weight.sum())


def noisy_gd_landing(noise, sharp_width: float = 0.15, lr=0.05, steps: int = 2000, runs: int = 400,
                     seed: int = 0) -> dict:
    r"""Gradient descent with Gaussian gradient noise on :func:`two_wells`, from uniform starts in [-2.5, 2.5]:

    .. math:: x_{t+1} = \mathrm{clip}_{[-3,3]}\big(x_t - \eta\,(L'(x_t) + \sigma\xi_t)\big),\qquad \xi_t\sim N(0,1).

    ``noise`` (:math:`\sigma`) and ``lr`` (:math:`\eta`) are floats or 1-D tensors of one length (one setting
    each, simulated together). Returns the final positions ``x`` (shape ``(runs,)`` or ``(settings, runs)``)
    and the share of runs in each basin, split at :func:`two_wells_barrier` (so ``sharp + flat = 1``),
    plus the ``barrier`` and the ``temperature`` :math:`\tau = \eta\sigma^2/2`.
    """
    sigma = torch.as_tensor(noise, dtype=torch.float64)
    eta = torch.as_tensor(lr, dtype=torch.float64)
    shape = torch.broadcast_shapes(sigma.shape, eta.shape)
    if len(shape) > 1:
        raise ValueError(f"noise and lr must be floats or 1-D tensors of one length, got shapes "
                         f"{tuple(sigma.shape)} and {tuple(eta.shape)}.")
    sig = sigma.expand(shape).unsqueeze(-1).numpy()
    et = eta.expand(shape).unsqueeze(-1).numpy()
    rng = np.random.default_rng(seed)                 # numpy: ten times less overhead per step than torch here
    x = np.broadcast_to(rng.random(runs) * 5 - 2.5, (*shape, runs)).copy()
    for _ in range(steps):
        xi = rng.standard_normal(x.shape)
        x = np.clip(x - et * (_two_wells_grad(x, sharp_width, 0.6, 1.0, 0.9, np.exp) + sig * xi), -3, 3)
    barrier = two_wells_barrier(sharp_width)
    x = torch.from_numpy(x)
    sharp = (x < barrier).double().mean(-1)
    temperature = (eta * sigma * sigma / 2).expand(shape)
    as_out = (lambda t: float(t)) if not shape else (lambda t: t)
    return {"x": x, "sharp": as_out(sharp), "flat": as_out(1 - sharp), "barrier": barrier,
            "temperature": as_out(temperature)}


# ---- chapter 02: SAM on a 2-D problem -------------------------------------------------------

def two_basins_2d(w: Tensor) -> Tensor:
    """A 2-D loss (last dimension = coordinates) with a sharp minimum near (-1, 0) (curvature about 27.5)
    and a wide one near (1.13, 0.28) (curvature about 1.75), separated by a low ridge whose crest is a
    saddle near (-0.447, 0.059) (see :func:`two_basins_2d_critical_points`)."""
    x, y = w[..., 0], w[..., 1]
    sharp = 1.1 * torch.exp(-((x + 1) ** 2 + y ** 2) / 0.08)
    flat = 1.0 * torch.exp(-((x - 1.2) ** 2 + (y - 0.3) ** 2) / 1.2)
    return 1.2 - sharp - flat + 0.05 * (x ** 2 + y ** 2)


def two_basins_2d_grad(w: Tensor) -> Tensor:
    """The gradient of :func:`two_basins_2d` in closed form (last dimension = coordinates)."""
    return _two_basins_2d_grad(w, torch.exp, torch.stack)


def _two_basins_2d_grad(w, exp, stack):
    x, y = w[..., 0], w[..., 1]
    sharp = 1.1 * exp(-((x + 1) ** 2 + y ** 2) / 0.08) / 0.04
    flat = 1.0 * exp(-((x - 1.2) ** 2 + (y - 0.3) ** 2) / 1.2) / 0.6
    return stack([sharp * (x + 1) + flat * (x - 1.2) + 0.1 * x, sharp * y + flat * (y - 0.3) + 0.1 * y], -1)


_CRITICAL_STARTS = {"sharp": (-1.0, 0.0), "wide": (1.2, 0.3), "saddle": (-0.45, 0.06)}


@functools.lru_cache(maxsize=1)
def _critical_points() -> dict:
    from torch.autograd.functional import hessian
    out = {}
    for name, start in _CRITICAL_STARTS.items():
        w = torch.tensor(start, dtype=torch.float64)
        for _ in range(50):                                    # Newton's method on the gradient
            w = w - torch.linalg.solve(hessian(two_basins_2d, w), two_basins_2d_grad(w))
        out[name] = (w, float(two_basins_2d(w)), torch.linalg.eigvalsh(hessian(two_basins_2d, w)))
    return out


def two_basins_2d_critical_points() -> dict:
    """The sharp minimum, the wide minimum and the saddle on the ridge between them, found by Newton's
    method: ``{name: {"w": point, "loss": L(w), "eigenvalues": Hessian eigenvalues (ascending)}}``."""
    return {name: {"w": w.clone(), "loss": loss, "eigenvalues": eig.clone()}
            for name, (w, loss, eig) in _critical_points().items()}


def sam_trajectory(rho: float, lr: float, steps: int = 200, start=(-0.7, 0.1), loss=two_basins_2d,
                   normalize: bool = True) -> Tensor:
    r"""Full-gradient SAM iterates (``rho=0``: gradient descent) from ``start``; shape (steps + 1, 2).

    :math:`\epsilon = \rho\,g/\|g\|` (``normalize=False``: USAM, :math:`\epsilon = \rho g`), then
    :math:`w \leftarrow w - \eta\nabla L(w+\epsilon)`. Gradients by autograd, so any ``loss`` works.
    """
    w = torch.tensor(start, dtype=torch.float64)
    path = [w.clone()]
    for _ in range(steps):
        w1 = w.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(w1), w1)
        if not normalize:
            eps = rho * g
        else:
            eps = rho * g / g.norm() if float(g.norm()) > 0 else torch.zeros_like(g)
        w2 = (w + eps).requires_grad_(True)
        (g2,) = torch.autograd.grad(loss(w2), w2)
        w = w - lr * g2
        path.append(w.clone())
    return torch.stack(path)


def sam_runs(rho, lr: float, steps: int = 200, start=(-0.7, 0.1), runs: int = 1, noise: float = 0.0,
             seed: int = 0, normalize: bool = True, rho_decay: bool = False) -> Tensor:
    r"""Many SAM runs on :func:`two_basins_2d` at once, with closed-form gradients; shape (steps + 1, runs, 2).

    ``rho`` is a float or a tensor of shape ``(runs,)`` (one radius per run). With ``noise`` :math:`>0`,
    independent Gaussian noise of that standard deviation is added to *both* gradients of every step
    (the one that builds :math:`\epsilon` and the one that steps). ``rho_decay=True`` shrinks the radius
    linearly, :math:`\rho_t = \rho\,(1 - t/T)`. ``normalize=False`` gives USAM (:math:`\epsilon = \rho g`).
    ``start`` is one point or a tensor of shape ``(runs, 2)``.
    """
    rng = np.random.default_rng(seed)
    r = torch.as_tensor(rho, dtype=torch.float64).expand(runs).unsqueeze(-1).numpy()
    w = torch.as_tensor(start, dtype=torch.float64).expand(runs, 2).numpy().copy()

    def grad(v):
        g = _two_basins_2d_grad(v, np.exp, np.stack)
        return g + noise * rng.standard_normal((runs, 2)) if noise else g

    path = [w.copy()]
    for t in range(steps):
        r_t = r * (1 - t / steps) if rho_decay else r
        g = grad(w)
        if normalize:
            n = np.linalg.norm(g, axis=-1, keepdims=True)
            eps = np.where(n > 0, r_t * g / np.maximum(n, 1e-300), 0.0)
        else:
            eps = r_t * g
        w = w - lr * grad(w + eps)
        path.append(w.copy())
    return torch.from_numpy(np.stack(path))


def dual_norm_perturbation(g: Tensor, rho: float, p: float) -> Tensor:
    r"""The maximizer of :math:`g^\top\epsilon` over :math:`\|\epsilon\|_p\le\rho`:

    .. math:: \epsilon^* = \rho\,\frac{\mathrm{sign}(g)\,|g|^{q-1}}{\|g\|_q^{\,q-1}},\qquad \tfrac1p+\tfrac1q=1,

    with :math:`p=2` giving :math:`\rho g/\|g\|` and :math:`p=\infty` giving :math:`\rho\,\mathrm{sign}(g)`.
    """
    if math.isinf(p):
        return rho * torch.sign(g)
    if p <= 1:
        raise ValueError(
            f"Invalid p: {p}. Use p > 1 (p = inf allowed). For p = 1 the maximizer is rho * sign(g_i) e_i at a "
            "coordinate i of largest |g_i|; it is not unique when several coordinates tie, so this function "
            "does not pick one.")
    q = p / (p - 1)
    return rho * torch.sign(g) * g.abs() ** (q - 1) / torch.linalg.vector_norm(g, q) ** (q - 1)


# ---- chapter 03: the two families ------------------------------------------------------------

def cp_perturbation(g: Tensor, c_inv: Tensor, rho: float) -> Tensor:
    r"""Constraint preconditioning: :math:`\arg\max_{\|C\epsilon\|\le\rho} g^\top\epsilon = \rho\,C^{-2}g/\|C^{-1}g\|`."""
    return rho * c_inv * c_inv * g / (c_inv * g).norm()


def op_perturbation(g: Tensor, P: Tensor, rho: float) -> Tensor:
    r"""Objective preconditioning: :math:`\arg\max_{\|\epsilon\|\le\rho} (Pg)^\top\epsilon = \rho\,Pg/\|Pg\|`."""
    return rho * P * g / (P * g).norm()


# ---- chapter 06: the noise-aware gain --------------------------------------------------------

def wiener_gain(g: Tensor, sigma2: Tensor) -> Tensor:
    """The per-coordinate signal-to-noise gain :math:`g^2/(g^2+\\sigma^2)` (1 where both vanish)."""
    den = g * g + sigma2
    return torch.where(den > 0, g * g / den.clamp_min(torch.finfo(g.dtype).tiny), torch.ones_like(g))


def expected_ascent_ratio(P: Tensor, g: Tensor, sigma2: Tensor) -> Tensor:
    r""":math:`\mathbb{E}[g^\top P g_b]/\sqrt{\mathbb{E}\|P g_b\|^2} = \sum P g^2/\sqrt{\sum P^2(g^2+\sigma^2)}`
    for :math:`g_b = g + \xi`, :math:`\mathbb{E}\xi = 0`, :math:`\mathrm{Cov}\,\xi = \mathrm{diag}(\sigma^2)`.
    Works on a batch of preconditioners (last dimension = coordinates)."""
    return (P * g * g).sum(-1) / (P * P * (g * g + sigma2)).sum(-1).sqrt()


def synthetic_alignment(noise: float, beta: float = 0.9, dim: int = 200, steps: int = 60, rho: float = 0.05,
                        floor: float = 0.0, seed: int = 0) -> dict:
    """InfoSAM's adversary against SAM's on a stream of noisy gradients :math:`g_b = g + \\sigma\\odot\\xi`.

    The true gradient ``g`` has a few strong coordinates and many weak ones; the noise scale
    ``sigma`` is ``noise`` times a heterogeneous profile. Runs :class:`samlib.optim.InfoSAM` and
    SAM on the same stream and returns the cosine of each perturbation with the full-gradient
    one, per step, plus the oracle gain's cosine.
    """
    from .optim import SAM, InfoSAM
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(dim, generator=gen, dtype=torch.float64) * torch.linspace(2.0, 0.05, dim, dtype=torch.float64)
    sigma = noise * torch.rand(dim, generator=gen, dtype=torch.float64) * 2
    w = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))
    info, sam = (InfoSAM([w], torch.optim.SGD, rho=rho, beta=beta, floor=floor, lr=0.0),
                 SAM([w], torch.optim.SGD, rho=rho, lr=0.0))
    cos = {"SAM": [], "InfoSAM": [], "oracle": []}
    target = g / g.norm()
    oracle_P = wiener_gain(g, sigma * sigma)
    for _ in range(steps):
        w.grad = g + sigma * torch.randn(dim, generator=gen, dtype=torch.float64)
        for name, opt in (("SAM", sam), ("InfoSAM", info)):
            (_, (eps,)), = opt.perturbation()
            cos[name].append(float(eps @ target / eps.norm().clamp_min(1e-300)))
        d = oracle_P * w.grad
        cos["oracle"].append(float(d @ target / d.norm()))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in cos.items()}


# ---- chapter 04: convergence on a nonconvex problem ------------------------------------------

class NonconvexProblem:
    r""":math:`L(w) = \sum_i \big(\tfrac12 w_i^2 + a\cos w_i\big)`, nonconvex for :math:`a > 1`, with smoothness
    constant :math:`\ell = 1 + a` (attribute ``ell``; ``L`` is an alias kept for old code), bounded below, and
    stochastic gradients :math:`\nabla L(w) + \sigma\xi`, :math:`\xi\sim N(0, I)`.

    Each coordinate has a maximum at 0 and minima at :math:`\pm w^*` (:math:`w^* = a\sin w^*`, 1.895 for
    :math:`a = 2`); the curvature :math:`1 - a\cos w_i` is negative for :math:`|w_i| < \arccos(1/a)`.
    """

    def __init__(self, dim: int = 10, a: float = 2.0, sigma: float = 1.0):
        self.dim, self.a, self.sigma = dim, a, sigma
        self.ell = self.L = 1.0 + a
        self.f_star = dim * min(0.5 * t * t + a * math.cos(t) for t in torch.linspace(-4, 4, 80001).tolist())

    def f(self, w: Tensor) -> Tensor:
        return (0.5 * w * w + self.a * torch.cos(w)).sum(-1)

    def grad(self, w: Tensor) -> Tensor:
        return w - self.a * torch.sin(w)

    def curvature(self, w: Tensor) -> Tensor:
        """The Hessian's diagonal :math:`1 - a\\cos w_i` (the Hessian is diagonal)."""
        return 1.0 - self.a * torch.cos(w)


def presam_sgd(problem: NonconvexProblem, T: int, eta: float, rho: float, runs: int = 64, seed: int = 0,
               precond: Tensor | None = None, kind: str = "OP", w0: float | str = 0.3,
               direction: str = "ascent") -> dict:
    r"""preSAM with plain SGD on :class:`NonconvexProblem`, vectorized over ``runs`` seeds.

    :math:`\epsilon_t = \rho\,d/\|n\|` from a noisy gradient (OP: :math:`d = n = Pg`; CP with
    ``precond`` :math:`= C^{-1}`: :math:`n = C^{-1}g`, :math:`d = C^{-2}g`), then
    :math:`w \leftarrow w - \eta\,\tilde g(w+\epsilon)` with an independent noisy gradient.
    ``rho=0`` is SGD (it draws the same noise, so runs are paired across ``rho``).

    ``w0``: every coordinate starts there (default 0.3, in the negative-curvature region around the
    maximum at 0), or ``"uniform"``: uniform in :math:`[-4, 4]` per coordinate.
    ``direction``: ``"ascent"`` (preSAM), ``"descent"`` (:math:`-\epsilon_t`) or ``"random"``
    (:math:`\rho u_t`, :math:`u_t` uniform on the unit sphere): the convergence bound of chapter 04 holds
    for all three, since it only uses :math:`\|\epsilon_t\|`.

    Returns the per-run average of :math:`\|\nabla L(w_t)\|^2` over :math:`t < T`, its mean over runs,
    the mean of :math:`L(w_0) - L^*`, the fraction of coordinate-steps with negative curvature and the
    mean :math:`\|\epsilon_t\|`.
    """
    if direction not in ("ascent", "descent", "random"):
        raise ValueError(f"Invalid direction: {direction!r}. Use 'ascent', 'descent' or 'random'.")
    gen = torch.Generator().manual_seed(seed)
    d = problem.dim
    P = torch.ones(d, dtype=torch.float64) if precond is None else precond.to(torch.float64)
    if w0 == "uniform":
        w = torch.rand(runs, d, generator=gen, dtype=torch.float64) * 8 - 4
    elif isinstance(w0, str):
        raise ValueError(f"Invalid w0: {w0!r}. Pass a number or 'uniform'.")
    else:
        w = torch.full((runs, d), float(w0), dtype=torch.float64)
    gap0 = float(problem.f(w).mean()) - problem.f_star
    acc = torch.zeros(runs, dtype=torch.float64)
    negative, eps_norm = 0.0, 0.0
    for _ in range(T):
        true = problem.grad(w)
        acc += (true * true).sum(-1)
        negative += float((problem.curvature(w) < 0).double().mean())
        g = true + problem.sigma * torch.randn(runs, d, generator=gen, dtype=torch.float64)
        if direction == "random":
            u = torch.randn(runs, d, generator=gen, dtype=torch.float64)
            eps = rho * u / u.norm(dim=-1, keepdim=True)
        else:
            n = P * g
            dvec = P * n if kind == "CP" else n
            eps = rho * dvec / n.norm(dim=-1, keepdim=True).clamp_min(1e-300)
            if direction == "descent":
                eps = -eps
        eps_norm += float(eps.norm(dim=-1).mean())
        g2 = problem.grad(w + eps) + problem.sigma * torch.randn(runs, d, generator=gen, dtype=torch.float64)
        w = w - eta * g2
    avg = acc / T
    return {"avg_sq_grad": avg, "mean": float(avg.mean()), "gap0": gap0, "neg_curvature": negative / T,
            "eps_norm": eps_norm / T}


# ---- chapter 04: SAM's fixed points and its trap around a maximum ---------------------------

def exact_sam_path(problem: NonconvexProblem, w0: Tensor, rho: float, lr: float, steps: int) -> Tensor:
    r"""Full-gradient SAM on ``problem`` (its noise is ignored) from a batch of starts ``w0`` (runs x dim):
    :math:`w \leftarrow w - \eta\,\nabla L\big(w + \rho\,\nabla L(w)/\|\nabla L(w)\|\big)`, with
    :math:`\epsilon = 0` where :math:`\nabla L(w) = 0`. Returns the path, shape (steps + 1, runs, dim).
    """
    w = torch.as_tensor(w0, dtype=torch.float64).clone()
    path = [w.clone()]
    for _ in range(steps):
        g = problem.grad(w)
        norm = g.norm(dim=-1, keepdim=True)
        eps = torch.where(norm > 0, rho * g / norm.clamp_min(1e-300), torch.zeros_like(g))
        w = w - lr * problem.grad(w + eps)
        path.append(w.clone())
    return torch.stack(path)
