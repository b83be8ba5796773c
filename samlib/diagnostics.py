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
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import to_float
from .optim import OPTIMIZERS, PreconditionedSAM

__all__ = ["data_loss", "flat_grad", "hvp", "top_hessian_eigenvalue", "hessian_trace", "sam_sharpness",
           "filter_normalized_direction", "loss_slice_1d", "loss_slice_2d", "gradient_noise", "snr",
           "adversary_alignment", "perturbed", "layer_noise"]

LossFn = Callable[[], Tensor]


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _norm(a: list[Tensor]) -> Tensor:
    return _dot(a, a).sqrt()


def data_loss(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 2048, loss=F.cross_entropy,
              train_mode: bool = False) -> LossFn:
    """``loss_fn`` for the mean loss of ``model`` on ``(x, y)``, in eval mode unless ``train_mode``.

    Eval mode makes the loss a deterministic function of the weights (BatchNorm uses its running
    statistics). Large datasets are processed in chunks; the result is the exact mean.
    """
    def loss_fn():
        was = model.training
        model.train(train_mode)
        try:
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
                        seed: int = 0, loss=F.cross_entropy) -> dict:
    """How good an adversary the minibatch perturbation of ``method`` is for the full-data loss.

    ``method`` is a samlib optimizer name or a :class:`PreconditionedSAM` subclass. Its running
    statistics are warmed up on ``warmup`` minibatches, then for each of ``n_batches`` further
    minibatches the perturbation :math:`\\epsilon_\\text{batch}` it builds is compared with the
    full-data SAM perturbation :math:`\\epsilon_\\text{full} = \\rho\\,\\nabla L/\\|\\nabla L\\|`:
    ``cos`` is :math:`\\cos(\\epsilon_\\text{batch}, \\epsilon_\\text{full})` and ``ascent`` is
    :math:`L(w+\\epsilon_\\text{batch}) - L(w)` on the full data (eval mode). The weights never move.
    """
    cls = OPTIMIZERS.get(method) if isinstance(method, str) else method
    if not (isinstance(cls, type) and issubclass(cls, PreconditionedSAM)):
        raise ValueError(f"Unknown method {method!r}. Pass a samlib.optim name ({', '.join(OPTIMIZERS)}) "
                         "or a PreconditionedSAM subclass.")
    params = [p for p in model.parameters() if p.requires_grad]
    full_loss = data_loss(model, x, y, loss=loss)
    with torch.no_grad():
        base = float(full_loss())
    g_full = flat_grad(full_loss, params)
    eps_full = [t * (rho / _norm(g_full)) for t in g_full]
    with perturbed(params, eps_full), torch.no_grad():
        full_ascent = float(full_loss()) - base
    opt = cls(params, torch.optim.SGD, rho=rho, lr=0.0, **(hparams or {}))
    gen = torch.Generator().manual_seed(seed)
    saved_grads = [p.grad for p in params]
    cos, ascent = [], []
    try:
        for t in range(warmup + n_batches):
            idx = torch.randperm(len(x), generator=gen)[:batch_size]
            for p, g in zip(params, _batch_grad(model, loss, x, y, params, idx, False)):
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
    return {"cos": torch.tensor(cos, dtype=torch.float64), "ascent": torch.tensor(ascent, dtype=torch.float64), "full_ascent": full_ascent, "loss": base}
