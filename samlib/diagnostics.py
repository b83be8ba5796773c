r"""What the chapters measure: sharpness, loss landscapes, gradient noise and the SAM adversary.

Most functions take ``loss_fn``, a zero-argument callable returning a scalar loss computed from
``params`` (so they apply equally to a quadratic and to a network), and ``params``, a list of
tensors with ``requires_grad``. :func:`data_loss` builds such a ``loss_fn`` for a model and a
dataset. Parameters are always restored exactly after a probe.

* Sharpness: top Hessian eigenvalue (power iteration on Hessian-vector products), Hessian trace
  (Hutchinson), and the SAM sharpness :math:`\max_{\|\epsilon\|\le\rho} L(w+\epsilon) - L(w)`
  to first order and by projected ascent.
* Landscapes: 1-D and 2-D slices along filter-normalized random or given directions.
* Gradient noise: per-coordinate mean and variance of minibatch gradients at fixed :math:`w`,
  signal-to-noise ratio, and the alignment :math:`\cos(\epsilon_\text{batch}, \epsilon_\text{full})`
  and full-data ascent of the perturbation any samlib optimizer builds from a minibatch.
* The first-/second-order split of a perturbation's full-data ascent (:func:`ascent_decomposition`).
* Noise-aware adversaries written from their formulas, independently of :mod:`samlib.optim`
  (:class:`DesignSpace`): gradient estimate (minibatch :math:`g_t` or running mean :math:`m_t`) x
  gain (none, from the statistics before the batch, from the current statistics), measured at fixed
  weights (:func:`design_space_alignment`) and along a real training run (:class:`AlignmentProbe`,
  :func:`train_with_probe`), with InfoSAM's internals and the noise estimate's inflation
  (:func:`noise_inflation`).

BatchNorm: every function that evaluates a network takes ``train_mode``. ``False`` (eval mode,
running statistics) makes the loss a deterministic function of the weights and the minibatch
gradient an unbiased estimate of the full one; ``True`` (batch statistics) is what SAM's first pass
sees in training. In train mode the running statistics are never touched (:func:`frozen_bn_stats`).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import to_float
from .optim import OPTIMIZERS, PreconditionedSAM, frozen_bn_stats

__all__ = ["data_loss", "flat_grad", "hvp", "top_hessian_eigenvalue", "hessian_trace", "sam_sharpness",
           "filter_normalized_direction", "loss_slice_1d", "loss_slice_2d", "gradient_noise", "snr",
           "adversary_alignment", "perturbed", "layer_noise", "ascent_decomposition", "snr_gain", "DesignSpace",
           "DESIGN_SPACE", "expected_v_ratio", "participation_ratio", "noise_inflation", "design_space_alignment", "AlignmentProbe",
           "train_with_probe", "synthetic_stream_alignment"]

LossFn = Callable[[], Tensor]


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _norm(a: list[Tensor]) -> Tensor:
    return _dot(a, a).sqrt()


def data_loss(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 2048, loss=F.cross_entropy,
              train_mode: bool = False) -> LossFn:
    """``loss_fn`` for the mean loss of ``model`` on ``(x, y)``, in eval mode unless ``train_mode``.

    Eval mode makes the loss a deterministic function of the weights (BatchNorm uses its running
    statistics). Large datasets are processed in chunks; the result is the exact mean. In train mode
    BatchNorm normalizes each chunk with its own statistics (so the loss depends on ``batch_size``)
    and the running statistics are left untouched.
    """
    def loss_fn():
        was = model.training
        model.train(train_mode)
        try:
            with frozen_bn_stats(model):
                total = 0.0
                for i in range(0, len(x), batch_size):
                    xb = to_float(x[i:i + batch_size])
                    total = total + loss(model(xb), y[i:i + batch_size], reduction="sum")
                return total / len(x)
        finally:
            model.train(was)
    return loss_fn


def flat_grad(loss_fn: LossFn, params: list[Tensor]) -> list[Tensor]:
    """The gradient of ``loss_fn()`` with respect to ``params`` (detached)."""
    return [g.detach() for g in torch.autograd.grad(loss_fn(), params)]


def hvp(loss_fn: LossFn, params: list[Tensor], v: list[Tensor]) -> list[Tensor]:
    """Hessian-vector product :math:`H v` by double backpropagation."""
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    return [h.detach() for h in torch.autograd.grad(grads, params, grad_outputs=v)]


def top_hessian_eigenvalue(loss_fn: LossFn, params: list[Tensor], iters: int = 50, tol: float = 1e-4,
                           seed: int = 0) -> tuple[float, list[Tensor]]:
    """Largest-magnitude Hessian eigenvalue and its eigenvector, by power iteration on :math:`Hv`."""
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
    n = _norm(v)
    v = [t / n for t in v]
    eig = 0.0
    for _ in range(iters):
        hv = hvp(loss_fn, params, v)
        new = float(_dot(hv, v))
        n = _norm(hv)
        if float(n) == 0.0:
            return 0.0, v
        v = [t / n for t in hv]
        if abs(new - eig) <= tol * max(1.0, abs(new)):
            eig = new
            break
        eig = new
    return eig, v


def hessian_trace(loss_fn: LossFn, params: list[Tensor], samples: int = 100, seed: int = 0) -> tuple[float, float]:
    """Hutchinson's estimate of :math:`\\mathrm{tr}\\,H = \\mathbb{E}[v^\\top H v]`, Rademacher :math:`v`.

    Returns ``(mean, standard error)`` over ``samples`` probes.
    """
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(samples):
        v = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p) for p in params]
        values.append(float(_dot(hvp(loss_fn, params, v), v)))
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std() / len(values) ** 0.5) if len(values) > 1 else 0.0


@contextmanager
def perturbed(params: list[Tensor], eps: list[Tensor]):
    """Temporarily move ``params`` to ``w + eps``; the exact ``w`` is restored afterwards."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.add_(e)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def sam_sharpness(loss_fn: LossFn, params: list[Tensor], rho: float, ascent_steps: int = 10,
                  step_size: float | None = None) -> dict:
    """The SAM sharpness :math:`\\max_{\\|\\epsilon\\|\\le\\rho} L(w+\\epsilon) - L(w)`, estimated

    * ``linear``: the first-order value :math:`\\rho\\|g\\|`;
    * ``first_order``: :math:`L(w+\\epsilon_1) - L(w)` at :math:`\\epsilon_1 = \\rho g/\\|g\\|`;
    * ``ascent``: after ``ascent_steps`` projected gradient-ascent steps started from
      :math:`\\epsilon_1` (normalized steps of ``step_size``, default :math:`\\rho/2`), keeping
      the best value seen (a lower bound on the true maximum).
    """
    with torch.no_grad():
        base = float(loss_fn())
    g = flat_grad(loss_fn, params)
    gn = _norm(g)
    eps = [t * (rho / gn) for t in g] if float(gn) > 0 else [torch.zeros_like(t) for t in g]
    with perturbed(params, eps), torch.no_grad():
        first = float(loss_fn()) - base
    best = first
    step = rho / 2 if step_size is None else step_size
    for _ in range(ascent_steps):
        with perturbed(params, eps):
            ge = flat_grad(loss_fn, params)
        n = _norm(ge)
        if float(n) == 0:
            break
        eps = [e + step * t / n for e, t in zip(eps, ge)]
        en = _norm(eps)
        if float(en) > rho:
            eps = [e * (rho / en) for e in eps]
        with perturbed(params, eps), torch.no_grad():
            best = max(best, float(loss_fn()) - base)
    return {"linear": float(rho * gn), "first_order": first, "ascent": best, "loss": base}


def filter_normalized_direction(model: nn.Module, seed: int = 0) -> list[Tensor]:
    """A random direction with each filter rescaled to the norm of the matching weight filter
    (Li et al., 2018); biases and BatchNorm parameters (1-D tensors) are set to zero."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for p in model.parameters():
        d = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
        if p.dim() <= 1:
            d.zero_()
        else:
            d_flat, p_flat = d.view(d.shape[0], -1), p.detach().view(p.shape[0], -1)
            d_flat.mul_(p_flat.norm(dim=1, keepdim=True) / d_flat.norm(dim=1, keepdim=True).clamp_min(1e-12))
        out.append(d)
    return out


@torch.no_grad()
def loss_slice_1d(loss_fn: LossFn, params: list[Tensor], direction: list[Tensor], alphas) -> Tensor:
    """:math:`L(w + \\alpha d)` for each ``alpha`` (e.g. ``d`` = filter-normalized or ``w_2 - w_1``)."""
    values = []
    for a in alphas:
        with perturbed(params, [float(a) * t for t in direction]):
            values.append(float(loss_fn()))
    return torch.tensor(values, dtype=torch.float64)


@torch.no_grad()
def loss_slice_2d(loss_fn: LossFn, params: list[Tensor], d1: list[Tensor], d2: list[Tensor], alphas, betas) -> Tensor:
    """:math:`L(w + \\alpha d_1 + \\beta d_2)` on the grid ``alphas x betas`` (rows: alpha)."""
    out = torch.empty(len(alphas), len(betas), dtype=torch.float64)
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            with perturbed(params, [float(a) * u + float(b) * v for u, v in zip(d1, d2)]):
                out[i, j] = float(loss_fn())
    return out


def _batch_grad(model, loss, x, y, params, idx, train_mode):
    was = model.training
    model.train(train_mode)
    try:
        with frozen_bn_stats(model):      # train mode: batch statistics, running statistics untouched
            value = loss(model(to_float(x[idx])), y[idx])
        return torch.autograd.grad(value, params)
    finally:
        model.train(was)


def gradient_noise(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, n_batches: int = 50, seed: int = 0,
                   loss=F.cross_entropy, replacement: bool = False, train_mode: bool = False) -> dict:
    """Per-coordinate mean and variance of minibatch gradients at fixed weights.

    Draws ``n_batches`` minibatches of ``batch_size`` (each without repeated examples, or i.i.d.
    with ``replacement=True``) and returns flat tensors ``mean``, ``var`` (unbiased over batches),
    the full-data gradient ``full``, and ``sizes`` (parameter sizes, to split flat tensors by layer).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    grads = []
    for _ in range(n_batches):
        idx = (torch.randint(0, len(x), (batch_size,), generator=gen) if replacement
               else torch.randperm(len(x), generator=gen)[:batch_size])
        grads.append(torch.cat([g.reshape(-1) for g in _batch_grad(model, loss, x, y, params, idx, train_mode)]))
    stack = torch.stack(grads)
    full = torch.cat([g.reshape(-1) for g in flat_grad(data_loss(model, x, y, loss=loss, train_mode=train_mode), params)])
    return {"mean": stack.mean(0), "var": stack.var(0, unbiased=True), "full": full, "batch_grads": stack,
            "sizes": [p.numel() for p in params]}


def snr(mean: Tensor, var: Tensor) -> Tensor:
    """Per-coordinate signal-to-noise ratio :math:`m^2/\\sigma^2` (inf where the variance is 0)."""
    return mean * mean / var


def layer_noise(model: nn.Module, noise: dict) -> list[dict]:
    """Per named parameter: size, mean squared signal, mean noise variance and their ratio."""
    out, start = [], 0
    for (name, p), n in zip(((n, p) for n, p in model.named_parameters() if p.requires_grad), noise["sizes"]):
        m, v = noise["mean"][start:start + n], noise["var"][start:start + n]
        out.append({"name": name, "size": n, "signal": float((m * m).mean()), "noise": float(v.mean()),
                    "snr": float((m * m).mean() / v.mean().clamp_min(1e-30))})
        start += n
    return out


def adversary_alignment(model: nn.Module, x: Tensor, y: Tensor, method="SAM", hparams: dict | None = None,
                        rho: float = 0.05, batch_size: int = 128, n_batches: int = 12, warmup: int = 20,
                        seed: int = 0, loss=F.cross_entropy, train_mode: bool = False) -> dict:
    """How good an adversary the minibatch perturbation of ``method`` is for the full-data loss.

    ``method`` is a samlib optimizer name or a :class:`PreconditionedSAM` subclass. Its running
    statistics are warmed up on ``warmup`` minibatches, then for each of ``n_batches`` further
    minibatches the perturbation :math:`\\epsilon_\\text{batch}` it builds is compared with the
    full-data SAM perturbation :math:`\\epsilon_\\text{full} = \\rho\\,\\nabla L/\\|\\nabla L\\|`:
    ``cos`` is :math:`\\cos(\\epsilon_\\text{batch}, \\epsilon_\\text{full})` and ``ascent`` is
    :math:`L(w+\\epsilon_\\text{batch}) - L(w)` on the full data. The weights never move.

    ``rho`` may also be given in ``hparams`` (the same value is then used for both perturbations).
    ``train_mode=True`` takes minibatch gradients with BatchNorm batch statistics, as SAM's first
    pass does in training, and the full-data loss with the full data's batch statistics (chunks of
    2048); the default, eval mode, uses the running statistics for both.
    """
    cls = OPTIMIZERS.get(method) if isinstance(method, str) else method
    if not (isinstance(cls, type) and issubclass(cls, PreconditionedSAM)):
        raise ValueError(f"Unknown method {method!r}. Pass a samlib.optim name ({', '.join(OPTIMIZERS)}) "
                         "or a PreconditionedSAM subclass.")
    hparams = dict(hparams or {})
    rho = hparams.pop("rho", rho)
    params = [p for p in model.parameters() if p.requires_grad]
    full_loss = data_loss(model, x, y, loss=loss, train_mode=train_mode)
    with torch.no_grad():
        base = float(full_loss())
    g_full = flat_grad(full_loss, params)
    eps_full = [t * (rho / _norm(g_full)) for t in g_full]
    with perturbed(params, eps_full), torch.no_grad():
        full_ascent = float(full_loss()) - base
    opt = cls(params, torch.optim.SGD, rho=rho, lr=0.0, **hparams)
    gen = torch.Generator().manual_seed(seed)
    saved_grads = [p.grad for p in params]
    cos, ascent = [], []
    try:
        for t in range(warmup + n_batches):
            idx = torch.randperm(len(x), generator=gen)[:batch_size]
            for p, g in zip(params, _batch_grad(model, loss, x, y, params, idx, train_mode)):
                p.grad = g
            by_param = {id(p): e for ps, es in opt.perturbation() for p, e in zip(ps, es)}
            eps = [by_param[id(p)].clone() for p in params]
            if t >= warmup:
                cos.append(float(_dot(eps, eps_full) / (_norm(eps) * _norm(eps_full)).clamp_min(1e-30)))
                with perturbed(params, eps), torch.no_grad():
                    ascent.append(float(full_loss()) - base)
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
    return {"cos": torch.tensor(cos, dtype=torch.float64), "ascent": torch.tensor(ascent, dtype=torch.float64),
            "full_ascent": full_ascent, "loss": base}


# ---- how much of an ascent is curvature ------------------------------------------------------

def ascent_decomposition(loss_fn: LossFn, params: list[Tensor], eps: list[Tensor],
                         grad: list[Tensor] | None = None) -> dict:
    r"""Split the ascent :math:`L(w+\epsilon) - L(w)` of a perturbation into its Taylor terms.

    Returns ``first_order`` :math:`g^\top\epsilon`, ``second_order`` :math:`\tfrac12\epsilon^\top H\epsilon`
    (one Hessian-vector product), ``quadratic`` (their sum), ``actual`` (the measured ascent) and
    ``remainder`` = actual - quadratic (third and higher orders). ``grad`` (:math:`g` at ``w``) may
    be passed to save a backward pass.
    """
    with torch.no_grad():
        base = float(loss_fn())
    g = grad if grad is not None else flat_grad(loss_fn, params)
    first = float(_dot(g, eps))
    second = 0.5 * float(_dot(eps, hvp(loss_fn, params, eps)))
    with perturbed(params, eps), torch.no_grad():
        actual = float(loss_fn()) - base
    return {"first_order": first, "second_order": second, "quadratic": first + second, "actual": actual,
            "remainder": actual - first - second}


# ---- noise-aware adversaries, from their formulas ----------------------------------------------

#: The design space of chapter 06: gradient estimate x gain. Keys and what they are.
DESIGN_SPACE = {
    "g": "SAM: the minibatch gradient g_t, no gain",
    "g*P_before": "InfoSAM, derivation-exact: g_t times the gain from m_{t-1}, v_{t-1} (fixed before the batch)",
    "g*P_current": "InfoSAM as implemented by default: g_t times the gain from m_t, v_t (contains g_t)",
    "m": "the running mean m_t, no gain: VaSSO with theta = 1 - beta",
    "m*P_before": "m_t times the gain for the mean's noise, from m_{t-1}, v_{t-1}",
    "m*P_current": "m_t times the gain for the mean's noise, from m_t, v_t",
}


def snr_gain(m: Tensor, v: Tensor, noise_scale: float = 1.0) -> Tensor:
    r"""The plug-in signal-to-noise gain :math:`m^2/(m^2 + c\,v)`, per coordinate (1 where it is 0/0).

    ``noise_scale`` :math:`c` is 1 for the gain applied to a minibatch gradient and
    :math:`(1-\beta)/(1+\beta)` for the gain applied to the running mean (whose noise is smaller).
    """
    m2 = m * m
    den = m2 + noise_scale * v
    return torch.where(den > 0, m2 / den.clamp_min(torch.finfo(m.dtype).tiny), torch.ones_like(m))


class DesignSpace:
    r"""Noise-aware perturbation directions, written from their formulas (independently of samlib.optim).

    Feed one flat minibatch gradient :math:`g_t` per step to :meth:`step`. The running statistics are
    InfoSAM's (chapter 06): :math:`m_0 = g_0, v_0 = 0`, then
    :math:`v_t = \beta v_{t-1} + (1-\beta)(g_t - m_{t-1})^2` and :math:`m_t = \beta m_{t-1} + (1-\beta) g_t`.
    :meth:`step` returns the unnormalized direction :math:`d` of each entry of :data:`DESIGN_SPACE`
    (the perturbation is :math:`\rho\,d/\|d\|`):

    * estimate :math:`g_t` or :math:`m_t`;
    * gain none, "before" (from :math:`m_{t-1}, v_{t-1}`; 1 at the first step) or "current" (from
      :math:`m_t, v_t`). For :math:`g_t` the gain is :math:`m^2/(m^2+v)`; for :math:`m_t` it is
      :math:`m^2/(m^2+v(1-\beta)/(1+\beta))`, the gain for the noise of the mean.

    ``floor`` bounds every gain from below. After a step, :attr:`gains` holds the four gains and
    :attr:`m`, :attr:`v` the statistics.
    """

    def __init__(self, beta: float = 0.9, floor: float = 0.0):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta: {beta!r}. beta must lie in [0, 1).")
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"Invalid floor: {floor!r}. floor must lie in [0, 1].")
        self.beta, self.floor = beta, floor
        self.m = self.v = None
        self.t = -1
        self.gains: dict = {}

    def step(self, g: Tensor) -> dict:
        g = g.detach()
        b = self.beta
        if self.m is None:
            before = None
            self.m, self.v = g.clone(), torch.zeros_like(g)
        else:
            before = (self.m, self.v)
            self.v = b * self.v + (1 - b) * (g - self.m) ** 2      # new tensors: `before` stays valid
            self.m = b * self.m + (1 - b) * g
        self.t += 1
        c = (1 - b) / (1 + b)
        one = torch.ones_like(g)
        gains = {"g*P_before": one if before is None else snr_gain(*before),
                 "g*P_current": snr_gain(self.m, self.v),
                 "m*P_before": one if before is None else snr_gain(before[0], before[1], c),
                 "m*P_current": snr_gain(self.m, self.v, c)}
        if self.floor > 0:
            gains = {k: P.clamp_min(self.floor) for k, P in gains.items()}
        self.gains = gains
        return {"g": g, "g*P_before": gains["g*P_before"] * g, "g*P_current": gains["g*P_current"] * g,
                "m": self.m, "m*P_before": gains["m*P_before"] * self.m, "m*P_current": gains["m*P_current"] * self.m}


def expected_v_ratio(beta: float, t: int) -> float:
    r""":math:`\mathbb E v_t/\sigma^2` for a stationary i.i.d. stream (mean :math:`g`, variance :math:`\sigma^2`)
    started like InfoSAM (:math:`m_0 = g_0, v_0 = 0`): :math:`\sum_{k=1}^t (1-\beta)\beta^{t-k}(1 + \operatorname{Var} m_{k-1}/\sigma^2)`
    with :math:`\operatorname{Var} m_k/\sigma^2 = \beta^{2k} + (1-\beta)(1-\beta^{2k})/(1+\beta)`. Tends to :math:`2/(1+\beta)`."""
    total = 0.0
    for k in range(1, t + 1):
        var_m = beta ** (2 * (k - 1)) + (1 - beta) * (1 - beta ** (2 * (k - 1))) / (1 + beta)
        total += (1 - beta) * beta ** (t - k) * (1 + var_m)
    return total


def participation_ratio(e: Tensor) -> float:
    r"""Effective number of coordinates of a vector, :math:`(\sum e_i^2)^2/\sum e_i^4` (1 to :math:`D`)."""
    e2 = e.double() ** 2
    den = float((e2 * e2).sum())
    return float(e2.sum()) ** 2 / den if den > 0 else 0.0


def noise_inflation(v: Tensor, fixed_var: Tensor) -> float:
    r"""The noise estimate's inflation :math:`\sum_i v_{t,i}/\sum_i \sigma_i^2`, with :math:`\sigma^2` the
    minibatch-gradient variance at fixed weights (e.g. ``gradient_noise(...)["var"]``). The stationary
    theory predicts :math:`2/(1+\beta)` (:func:`expected_v_ratio` after a finite warm-up); drift adds to it."""
    return float(v.double().sum() / fixed_var.double().sum())


def _flat(ts) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _unflat(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
    out, i = [], 0
    for p in params:
        out.append(flat[i:i + p.numel()].view_as(p))
        i += p.numel()
    return out


def _cos(a: Tensor, b: Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def synthetic_stream_alignment(noise: float = 0.8, beta: float = 0.9, drift: float = 0.0, dim: int = 200,
                               steps: int = 60, seed: int = 0) -> dict:
    r"""The design space on a synthetic gradient stream :math:`g_t = g(t) + \sigma\odot\xi_t` (chapter 06's widget).

    The true gradient has a few strong and many weak coordinates,
    :math:`g(t) = \cos(\omega t)\,a + \sin(\omega t)\,b` with :math:`\omega` = ``drift`` degrees per step
    (0: a stationary stream, as at fixed weights), and the noise scale :math:`\sigma` is ``noise``
    times a heterogeneous profile. Returns, per step, the cosine with :math:`g(t)` of SAM's direction
    (``"SAM"``), InfoSAM's with the current gain (``"InfoSAM"``) and with the gain from before the batch
    (``"InfoSAM, gain before"``), the running mean (``"running mean"``: VaSSO with
    :math:`\theta = 1-\beta`) and the oracle gain :math:`g(t)^2/(g(t)^2+\sigma^2)` applied to :math:`g_t` (``"oracle"``).
    """
    gen = torch.Generator().manual_seed(seed)
    scale = torch.linspace(2.0, 0.05, dim, dtype=torch.float64)
    a = torch.randn(dim, generator=gen, dtype=torch.float64) * scale
    sigma = noise * torch.rand(dim, generator=gen, dtype=torch.float64) * 2
    b = torch.randn(dim, generator=gen, dtype=torch.float64) * scale
    omega = drift * torch.pi / 180
    space = DesignSpace(beta)
    keys = {"SAM": "g", "InfoSAM": "g*P_current", "InfoSAM, gain before": "g*P_before", "running mean": "m"}
    cos: dict = {k: [] for k in [*keys, "oracle"]}
    for t in range(steps):
        g_true = math.cos(omega * t) * a + math.sin(omega * t) * b
        gt = g_true + sigma * torch.randn(dim, generator=gen, dtype=torch.float64)
        dirs = space.step(gt)
        for name, key in keys.items():
            cos[name].append(_cos(dirs[key], g_true))
        cos["oracle"].append(_cos(snr_gain(g_true, sigma * sigma) * gt, g_true))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in cos.items()}


def design_space_alignment(model: nn.Module, x: Tensor, y: Tensor, rho: float = 0.05, beta: float = 0.9,
                           batch_size: int = 128, n_streams: int = 16, warmup: int = 20, seed: int = 0,
                           loss=F.cross_entropy, train_mode: bool = False, inverse_variance=(0.1, 10.0),
                           oracle_batches: int = 64) -> dict:
    r"""The design space of noise-aware adversaries at fixed weights, with independent repetitions.

    Each of ``n_streams`` independent streams draws ``warmup`` minibatches (to fill the running
    statistics) and one more, at which every direction of :class:`DesignSpace` is built; so the
    ``n_streams`` values per direction are i.i.d. and their standard error is sd/sqrt(n_streams).
    Also built at that step: inverse-variance weighting :math:`P = 1/(v_t + \delta\,\overline{v_t})` for each
    :math:`\delta` in ``inverse_variance`` (keys ``"g/v(delta)"``), and the oracle gain
    :math:`P^* = g^2/(g^2+\sigma^2)` from the true full gradient and the minibatch variance measured on
    ``oracle_batches`` further batches (key ``"g*P_oracle"``; skipped if 0).

    Returns ``cos`` and ``ascent`` (name -> tensor over streams; ascent is the full-data
    :math:`L(w+\epsilon)-L(w)`), ``full_ascent`` of :math:`\epsilon_\text{full}`, ``loss``, ``inflation``
    (per stream, :math:`\sum v_t/\sum\sigma^2`, with ``expected_inflation`` from :func:`expected_v_ratio`;
    needs ``oracle_batches``), and the mean gains (``mean_P``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    full_loss = data_loss(model, x, y, loss=loss, train_mode=train_mode)
    with torch.no_grad():
        base = float(full_loss())
    g_full = _flat(flat_grad(full_loss, params))

    def ascent_of(d):
        eps = _unflat(d * (rho / d.norm().clamp_min(1e-300)), params)
        with perturbed(params, eps), torch.no_grad():
            return float(full_loss()) - base

    def batch_grad(gen):
        idx = torch.randperm(len(x), generator=gen)[:batch_size]
        return _flat(_batch_grad(model, loss, x, y, params, idx, train_mode))

    var = None
    if oracle_batches:
        gen = torch.Generator().manual_seed(seed * 7919 + 104729)
        var = torch.stack([batch_grad(gen) for _ in range(oracle_batches)]).var(0, unbiased=True)
    cos: dict = {}
    ascent: dict = {}
    mean_P: dict = {}
    inflation = []
    for s in range(n_streams):
        gen = torch.Generator().manual_seed(seed * 100_003 + s)
        space = DesignSpace(beta)
        for _ in range(warmup):
            space.step(batch_grad(gen))
        gb = batch_grad(gen)
        dirs = space.step(gb)
        for delta in inverse_variance:
            v = space.v
            damped = v + delta * v.mean()
            P = torch.where(damped > 0, 1 / damped.clamp_min(torch.finfo(v.dtype).tiny), torch.ones_like(v))
            dirs[f"g/v({delta:g})"] = P * gb
        if var is not None:
            dirs["g*P_oracle"] = snr_gain(g_full, var) * gb
            inflation.append(noise_inflation(space.v, var))
        for name, P in space.gains.items():
            mean_P.setdefault(name, []).append(float(P.mean()))
        for name, d in dirs.items():
            cos.setdefault(name, []).append(_cos(d, g_full))
            ascent.setdefault(name, []).append(ascent_of(d))
    full_ascent = ascent_of(g_full)
    t64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return {"cos": {k: t64(v) for k, v in cos.items()}, "ascent": {k: t64(v) for k, v in ascent.items()},
            "full_ascent": full_ascent, "loss": base, "mean_P": {k: t64(v) for k, v in mean_P.items()},
            "inflation": t64(inflation), "expected_inflation": expected_v_ratio(beta, warmup)}


class AlignmentProbe:
    r"""In-training alignment of the design space's adversaries, at the weights the run is at.

    Call :meth:`observe` once per training step, after the backward pass at :math:`w_t` (so
    ``p.grad`` holds the minibatch gradient :math:`g_t`) and before the optimizer moves anything.
    Every step it advances its own running statistics (:class:`DesignSpace`, the same stream InfoSAM
    sees); every ``every`` steps from ``start`` it also computes the full-data gradient :math:`\nabla L`
    at the same :math:`w_t` and records, for every direction :math:`d`, ``cos`` :math:`\cos(d, \nabla L)`
    and (``ascent=True``) the full-data ascent :math:`L(w+\rho d/\|d\|) - L(w)`; and InfoSAM's internals
    for both gain rules: mean :math:`P`, the fraction of coordinates with :math:`P < 0.1`, the mean
    :math:`P` per named parameter (``"g*P_current"`` only), and each direction's participation ratio
    (effective number of coordinates, as a fraction of :math:`D`). At the steps in ``inflation_at``
    it measures the minibatch variance at fixed :math:`w_t` (``inflation_batches`` batches of
    ``batch_size``) and records :func:`noise_inflation` of :math:`v_t`; at the steps in
    ``curvature_at``, :func:`ascent_decomposition` of SAM's and InfoSAM's perturbations.

    Nothing it does changes the run: the weights, gradients, BatchNorm statistics and global RNG are
    untouched (``train_with_probe`` is tested to reproduce :func:`samlib.train.train` bit for bit).
    ``train_mode=True`` (default) evaluates the full data with BatchNorm batch statistics (one chunk of
    up to ``full_batch_size`` examples), like the minibatch gradient the optimizer sees.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, rho: float = 0.05, beta: float = 0.9,
                 every: int = 10, start: int = 0, loss=F.cross_entropy, train_mode: bool = True,
                 ascent: bool = True, inflation_at=(), inflation_batches: int = 32, batch_size: int = 128,
                 curvature_at=(), full_batch_size: int = 4096, seed: int = 0):
        if every < 1:
            raise ValueError(f"Invalid every: {every}. Measure every k >= 1 steps.")
        self.model, self.x, self.y, self.rho, self.loss = model, x, y, rho, loss
        self.every, self.start, self.train_mode, self.ascent = every, start, train_mode, ascent
        self.inflation_at, self.curvature_at = set(inflation_at), set(curvature_at)
        self.inflation_batches, self.batch_size, self.full_batch_size, self.seed = (
            inflation_batches, batch_size, full_batch_size, seed)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.space = DesignSpace(beta)
        self.records: list[dict] = []
        self.inflation: list[dict] = []
        self.curvature: list[dict] = []

    def observe(self, step: int, lr: float | None = None) -> dict | None:
        """Advance the statistics with the gradients in ``.grad``; measure if ``step`` is due. Returns the record or None."""
        missing = [n for n, p in zip(self.names, self.params) if p.grad is None]
        if missing:
            raise RuntimeError(f"AlignmentProbe.observe() needs gradients at w; {missing[0]} has none. "
                               "Call it after loss.backward() and before the optimizer's step.")
        g = _flat([p.grad for p in self.params]).detach().clone()
        dirs = self.space.step(g)
        due = step >= self.start and (step - self.start) % self.every == 0
        record = None
        if due or step in self.inflation_at or step in self.curvature_at:
            loss_fn = data_loss(self.model, self.x, self.y, batch_size=self.full_batch_size, loss=self.loss,
                                train_mode=self.train_mode)
            g_full_list = flat_grad(loss_fn, self.params)
            g_full = _flat(g_full_list)
            if due:
                record = self._measure(step, lr, loss_fn, g_full, dirs)
                self.records.append(record)
            if step in self.inflation_at:
                noise = gradient_noise(self.model, self.x, self.y, self.batch_size, self.inflation_batches,
                                       seed=self.seed + step, loss=self.loss, train_mode=self.train_mode)
                self.inflation.append({"step": step, "inflation": noise_inflation(self.space.v, noise["var"]),
                                       "expected_stationary": 2 / (1 + self.space.beta),
                                       "oracle_cos": _cos(snr_gain(g_full, noise["var"]) * g, g_full),
                                       "mean_oracle_P": float(snr_gain(g_full, noise["var"]).mean())})
            if step in self.curvature_at:
                row = {"step": step}
                for name in ("g", "g*P_current", "full"):
                    d = g_full if name == "full" else dirs[name]
                    eps = _unflat(d * (self.rho / d.norm().clamp_min(1e-300)), self.params)
                    row[name] = ascent_decomposition(loss_fn, self.params, eps, grad=g_full_list)
                self.curvature.append(row)
        return record

    def _measure(self, step, lr, loss_fn, g_full, dirs) -> dict:
        with torch.no_grad():
            base = float(loss_fn())
        rec = {"step": step, "lr": lr, "loss": base, "grad_norm": float(g_full.norm()), "cos": {}, "ascent": {},
               "participation": {}}
        D = g_full.numel()
        for name, d in [*dirs.items(), ("full", g_full)]:
            if name != "full":
                rec["cos"][name] = _cos(d, g_full)
            rec["participation"][name] = participation_ratio(d) / D
            if self.ascent:
                eps = _unflat(d * (self.rho / d.norm().clamp_min(1e-300)), self.params)
                with perturbed(self.params, eps), torch.no_grad():
                    rec["ascent"][name] = float(loss_fn()) - base
        gains = self.space.gains
        rec["mean_P"] = {k: float(P.mean()) for k, P in gains.items()}
        rec["frac_P_below_0.1"] = {k: float((P < 0.1).double().mean()) for k, P in gains.items()}
        P = gains["g*P_current"]
        rec["layer_mean_P"] = {n: float(t.mean()) for n, t in zip(self.names, _unflat(P, self.params))}
        return rec

    def summary(self, phases: int = 3) -> list[dict]:
        """Per phase (equal thirds of the measured steps by default): mean and standard error of each
        direction's cosine and ascent, and the paired difference of each direction's cosine from SAM's.

        The SE treats the measured steps as independent; consecutive measurements are correlated
        through the weights and the running statistics, so read it as a lower bound.
        """
        out = []
        n = len(self.records)
        for k in range(phases):
            rows = self.records[k * n // phases:(k + 1) * n // phases]
            if not rows:
                continue
            row = {"steps": (rows[0]["step"], rows[-1]["step"]), "n": len(rows)}
            for key in ("cos", "ascent"):
                for name in rows[0][key]:
                    vals = torch.tensor([r[key][name] for r in rows], dtype=torch.float64)
                    row.setdefault(key, {})[name] = _mean_se(vals)
            for name in rows[0]["cos"]:
                diff = torch.tensor([r["cos"][name] - r["cos"]["g"] for r in rows], dtype=torch.float64)
                row.setdefault("cos_minus_sam", {})[name] = _mean_se(diff)
            row["mean_P"] = {name: float(torch.tensor([r["mean_P"][name] for r in rows]).mean())
                             for name in rows[0]["mean_P"]}
            out.append(row)
        return out


def _mean_se(values: Tensor) -> tuple[float, float]:
    n = len(values)
    return float(values.mean()), float(values.std() / n ** 0.5) if n > 1 else float("nan")


def train_with_probe(config, train_data: tuple, probe: dict | None = None, num_classes: int = 10) -> dict:
    """Train like :func:`samlib.train.train` (same initialization, data order, schedule and SAM step,
    single process, no AMP or m-sharpness) with an :class:`AlignmentProbe` observing every step.

    ``probe`` holds the probe's keyword arguments (``rho`` defaults to the method's ``rho``).
    Returns ``{"model", "probe", "train_loss"}`` (``train_loss``: mean minibatch loss per epoch).
    """
    from .models import build_model
    from .train import _lr_lambda, make_optimizer, training_batches
    config.validate()
    if config.m_sharpness or config.amp:
        raise ValueError("train_with_probe supports plain SAM steps only: set m_sharpness=None and amp=None.")
    device = torch.device(config.device or "cpu")
    x, y = train_data[0], train_data[1]
    torch.manual_seed(config.seed)
    model = build_model(config.model, x.shape[1], num_classes, **config.model_kwargs).to(device)
    opt = make_optimizer(config, model.parameters())
    batches = training_batches(config, x, y, device)
    steps = min(len(batches), config.steps_per_epoch or len(batches))
    total = config.epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config, total))

    def loss_fn(out, target, reduction="mean"):
        return F.cross_entropy(out, target, label_smoothing=config.label_smoothing, reduction=reduction)
    kwargs = {"rho": config.hparams.get("rho", 0.05), "batch_size": config.batch_size, "loss": loss_fn,
              **(probe or {})}
    watcher = AlignmentProbe(model, to_float(x.to(device)), y.to(device), **kwargs)
    sam = config.method != "SGD"
    step, losses = 0, []
    for _ in range(config.epochs):
        model.train()
        total_loss, seen = 0.0, 0
        for i, (xb, yb) in enumerate(batches):
            if i == steps:
                break
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            watcher.observe(step, lr=opt.param_groups[0]["lr"])
            if sam:
                opt.first_step(zero_grad=True)
                with frozen_bn_stats(model):
                    loss_fn(model(xb), yb).backward()
                opt.second_step(zero_grad=True)
            else:
                opt.step()
                opt.zero_grad()
            sched.step()
            step += 1
            total_loss += float(loss.detach()) * len(yb)
            seen += len(yb)
        losses.append(total_loss / seen)
    return {"model": model, "probe": watcher, "train_loss": losses}
