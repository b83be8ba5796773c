r"""The preconditioned-SAM scheme (preSAM) that every samlib optimizer instantiates.

SAM (Foret et al., 2021) minimizes :math:`\max_{\|\epsilon\|\le\rho} L(w+\epsilon)`. Each step

1. builds a perturbation :math:`\epsilon` from the gradient :math:`g` at :math:`w`,
2. takes the gradient at :math:`w+\epsilon`, restores :math:`w`, and lets a base optimizer
   (SGD, Adam, ...) step with that gradient.

preSAM (Zhang, Li & Giannakis, 2025) writes the perturbation of every variant as

.. math::

    \epsilon = \rho\,\frac{d}{\|n\|},

with a gradient estimate :math:`\hat g` (raw :math:`g`, an EMA, a corrected :math:`g`) and a
diagonal preconditioner of one of two kinds:

* constraint preconditioning (CP), :math:`\max \hat g^\top\epsilon` s.t. :math:`\|C\epsilon\|\le\rho`:
  :math:`n = C^{-1}\hat g`, :math:`d = C^{-1} n = C^{-2}\hat g`;
* objective preconditioning (OP), :math:`\max (P\hat g)^\top\epsilon` s.t. :math:`\|\epsilon\|\le\rho`:
  :math:`d = n = P\hat g`.

Norms are global over all parameters. A variant overrides only :meth:`gradient_estimate` and
:meth:`preconditioner` (which returns :math:`C^{-1}` for CP and :math:`P` for OP).

Implementation: the hooks see each parameter group as flat 1-D tensors (one per device and dtype),
so a variant's arithmetic costs a handful of kernels whatever the number of parameter tensors, and
its code reads like its formula. Running statistics live in those flat tensors; ``self.state[p]``
holds views of them, so ``state_dict()`` stays per parameter as in ``torch.optim``.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["PreconditionedSAM", "check_range"]


def check_range(name: str, value: float, low: float, high: float | None = None, *, high_open: bool = False):
    """Raise ``ValueError`` naming ``name`` unless ``low <= value <= high`` (``< high`` if ``high_open``)."""
    if high is None:
        if not value >= low:
            raise ValueError(f"Invalid {name}: {value!r}. {name} must be >= {low}.")
        return
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise ValueError(f"Invalid {name}: {value!r}. {name} must lie in {interval}.")


class PreconditionedSAM(Optimizer):
    r"""Base class of the preSAM family: :math:`\epsilon = \rho\, d/\|n\|` (see the module docstring).

    Args:
        params: iterable of parameters or dicts defining parameter groups (per-group ``rho`` and
            variant hyperparameters are allowed, as in ``torch.optim``).
        base_optimizer: an optimizer *class*, e.g. ``torch.optim.SGD``; it takes the descent step.
        rho: neighbourhood radius, ``>= 0``. ``rho=0`` reproduces the base optimizer.
        variant_defaults: the variant's own hyperparameters (subclasses pass these).
        **base_kwargs: passed to ``base_optimizer`` (``lr``, ``momentum``, ``weight_decay``, ...).

    The wrapper and the base optimizer share ``param_groups``, so an LR scheduler may be attached
    to either. Two ways to step:

    * two-step: ``loss.backward(); opt.first_step(zero_grad=True); loss_fn().backward();
      opt.second_step(zero_grad=True)``;
    * closure: ``opt.step(closure)``, where the closure zeroes the grads, runs forward and
      backward, and returns the loss. It is called at :math:`w` and at :math:`w+\epsilon`.
    """

    #: ``"CP"`` (constraint preconditioning) or ``"OP"`` (objective preconditioning).
    preconditioning = "OP"
    #: Whether the hooks read ``w``; otherwise the weights are not gathered (saving a pass over memory).
    uses_weights = False

    def __init__(self, params, base_optimizer, rho: float = 0.05, variant_defaults: dict | None = None,
                 **base_kwargs):
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer)):
            raise TypeError(
                f"base_optimizer must be an optimizer class such as torch.optim.SGD, got "
                f"{base_optimizer!r}. Pass the class and its arguments: "
                f"{type(self).__name__}(params, torch.optim.SGD, lr=0.1, momentum=0.9)."
            )
        check_range("rho", rho, 0.0)
        defaults = dict(rho=rho, **(variant_defaults or {}))
        super().__init__(params, defaults)
        for group in self.param_groups:
            check_range("rho", group["rho"], 0.0)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        # add_param_group mutated the same dicts, so both optimizers now share them.
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._chunks: dict = {}  # flat working buffers and running statistics, see _Chunk
        self._perturbed = None  # [(param, original storage)] between first_step and second_step

    # ---- the two hooks a variant overrides -------------------------------------------------

    def gradient_estimate(self, g: Tensor, w: Tensor, state: dict, group: dict) -> Tensor:
        r"""The gradient estimate :math:`\hat g` the perturbation follows. Default: the raw :math:`g`.

        ``g`` and ``w`` are one parameter group's gradient and weights, flattened (read only;
        ``w`` is ``None`` unless the class sets ``uses_weights = True``).
        ``state`` persists across steps (empty at the first step); tensors stored in it must be
        flat like ``g`` and are exposed per parameter in ``self.state[p]``. ``state.scratch(name)``
        is a persistent working buffer like ``g`` that is not saved (it saves an allocation).
        """
        return g

    def preconditioner(self, g: Tensor, w: Tensor, state: dict, group: dict) -> Tensor | None:
        r"""The diagonal preconditioner: :math:`C^{-1}` (CP) or :math:`P` (OP); ``None`` is the identity.

        Called after :meth:`gradient_estimate` with the same arguments.
        """
        return None

    # ---- the scheme ------------------------------------------------------------------------

    def _current_chunks(self) -> list[tuple[dict, "_Chunk"]]:
        chunks = []
        for gi, group in enumerate(self.param_groups):
            by_kind: dict = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_kind.setdefault((p.device, p.dtype), []).append(p)
            for kind, params in by_kind.items():
                key = (gi, kind)
                chunk = self._chunks.get(key)
                if chunk is None or chunk.ids != tuple(map(id, params)):  # ids: tensors' == is elementwise
                    chunk = self._chunks[key] = _Chunk(params, self.state)
                chunks.append((group, chunk))
        return chunks

    def _perturb(self) -> list["_Chunk"]:
        """Fill every chunk's ``eps`` buffer; return the chunks that have gradients."""
        work, sq_norms = [], []
        for group, chunk in self._current_chunks():
            g, w = chunk.gather(self.uses_weights)
            g_hat = self.gradient_estimate(g, w, chunk.state, group)
            c = self.preconditioner(g, w, chunk.state, group)
            chunk.publish_state(self.state)
            if c is None:
                n = d = g_hat
            else:
                n = d = torch.mul(g_hat, c, out=chunk.eps)  # OP: d = n = P g;  CP: n = C^{-1} g
            sq_norms.append(_sq_norm(n))
            if c is not None and self.preconditioning == "CP":
                d.mul_(c)                                   # CP: d = C^{-1} n = C^{-2} g
            work.append((group["rho"], chunk, d))
        if not work:
            return []
        norm = torch.stack(sq_norms).sum().sqrt()
        inv_norm = torch.where(torch.isfinite(norm) & (norm > 0), 1.0 / norm, torch.zeros_like(norm))
        for rho, chunk, d in work:
            torch.mul(d, inv_norm * rho, out=chunk.eps)     # eps = rho d / ||n||
            chunk.eps.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # a non-finite norm gives 0 * inf
        return [chunk for _, chunk, _ in work]

    @torch.no_grad()
    def perturbation(self) -> list[tuple[list[Tensor], list[Tensor]]]:
        r"""Compute :math:`\epsilon` for every parameter with a gradient, without moving anything.

        Returns ``(params, eps)`` pairs, one per parameter group (and device/dtype); ``eps`` are
        views into a buffer that the next call overwrites. Advances the variant's running
        statistics by one step. A zero or non-finite :math:`\|n\|` gives :math:`\epsilon = 0`,
        with no host synchronization.
        """
        return [(chunk.params, chunk.eps_views) for chunk in self._perturb()]

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False):
        r"""Move every parameter from :math:`w` to :math:`w+\epsilon`. Needs ``.grad`` at :math:`w`.

        The parameters are pointed at a buffer holding :math:`w+\epsilon`; their own storage, and
        so :math:`w` itself, is left untouched until :meth:`second_step` points them back.
        """
        self.restore()
        perturbed = []
        for chunk in self._perturb():
            for p, e, w_plus_eps in zip(chunk.params, chunk.eps_views, chunk.w_plus_views):
                torch.add(p, e, out=w_plus_eps)            # into a persistent buffer: no allocation
                perturbed.append((p, p.data))
                p.data = w_plus_eps
        self._perturbed = perturbed
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self):
        r"""Point every parameter back at its own storage, which still holds :math:`w` bit for bit."""
        for p, original in self._perturbed or []:
            p.data = original
        self._perturbed = None

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False):
        r"""Restore :math:`w` bit for bit, then step the base optimizer. Needs ``.grad`` at :math:`w+\epsilon`."""
        if self._perturbed is None:
            raise RuntimeError(
                "second_step() was called without first_step(). Call first_step() after the "
                "backward pass at w, then second_step() after the backward pass at w + eps."
            )
        self.restore()
        self.base_step()
        if zero_grad:
            self.zero_grad()

    def base_step(self, step=None):
        """Step the base optimizer at the restored :math:`w`: ``step()`` if given (e.g. a GradScaler's
        ``lambda: scaler.step(opt.base_optimizer)``), else ``base_optimizer.step()``."""
        (step or self.base_optimizer.step)()
        self._opt_called = True  # tells an LR scheduler attached to this wrapper that a step happened

    def step(self, closure=None):
        """One SAM step with a closure that zeroes grads, runs forward and backward, and returns the loss.

        Returns the loss at :math:`w` (before the step).
        """
        if closure is None:
            raise RuntimeError(
                f"{type(self).__name__}.step() requires a closure: it must evaluate the loss twice, at w "
                "and at w + eps. Pass step(closure) where the closure zeroes grads, runs forward and "
                "backward, and returns the loss; or call first_step() and second_step() yourself."
            )
        closure = torch.enable_grad()(closure)
        loss = closure()
        self.first_step()
        closure()
        self.second_step()
        return loss

    # ---- state ------------------------------------------------------------------------------

    def state_dict(self):
        """The variant's running statistics plus the base optimizer's state (e.g. momentum buffers)."""
        state = super().state_dict()
        state["base_optimizer"] = self.base_optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        if "base_optimizer" not in state_dict:
            raise KeyError(
                "state_dict has no 'base_optimizer' entry; it was not saved by a samlib optimizer's "
                "state_dict(). Load a base-optimizer state with opt.base_optimizer.load_state_dict()."
            )
        base = state_dict.pop("base_optimizer")
        super().load_state_dict(state_dict)
        self.base_optimizer.load_state_dict(base)
        self.param_groups = self.base_optimizer.param_groups
        self._chunks = {}  # regathered from the loaded per-parameter state at the next step

    def __repr__(self):
        return f"{type(self).__name__}({self.preconditioning}, base={self.base_optimizer!r})"


def _sq_norm(x: Tensor) -> Tensor:
    """Squared 2-norm as a 0-dim float32/64 tensor (no host sync; float16 would overflow)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.linalg.vector_norm(x, dtype=acc).square()


class _Chunk:
    r"""One parameter group's parameters of one device and dtype, seen as flat tensors.

    Holds persistent buffers for the flattened gradient ``g``, weights ``w``, perturbation ``eps``
    and perturbed weights ``w_plus``, and the variant's running statistics ``state`` as flat
    tensors, of which ``self.state[p]`` holds per-parameter views.
    """

    def __init__(self, params: list[Tensor], optimizer_state):
        self.params = params
        self.ids = tuple(map(id, params))
        self.sizes = [p.numel() for p in params]
        like = params[0]
        n = sum(self.sizes)
        self.g = torch.empty(n, device=like.device, dtype=like.dtype)
        self.g_views = self._views(self.g)
        self.w = self.w_views = None
        self.eps = torch.zeros_like(self.g)
        self.eps_views = self._views(self.eps)
        self.w_plus_views = self._views(torch.empty_like(self.g))
        # regather running statistics saved per parameter (after load_state_dict or a new chunk)
        self.state = _ChunkState(self.g)
        per_param = [optimizer_state[p] for p in params]
        for name in set.intersection(*(set(s) for s in per_param)):
            values = [s[name] for s in per_param]
            if not torch.is_tensor(values[0]):
                self.state[name] = values[0]
            elif all(v.numel() == p.numel() for v, p in zip(values, params)):
                self.state[name] = torch.cat([v.reshape(-1).to(like) for v in values])

    def _views(self, flat):
        return [v.view_as(p) for v, p in zip(flat.split(self.sizes), self.params)]

    def gather(self, weights: bool):
        torch._foreach_copy_(self.g_views, [p.grad for p in self.params])
        if weights:
            if self.w is None:
                self.w = torch.empty_like(self.g)
                self.w_views = self._views(self.w)
            torch._foreach_copy_(self.w_views, self.params)
        return self.g, self.w

    def publish_state(self, optimizer_state):
        """Expose the flat running statistics per parameter, as views (tensors) or copies (scalars)."""
        for name, value in self.state.items():
            if torch.is_tensor(value):
                if getattr(self, "_published", {}).get(name) is value:
                    continue
                for p, view in zip(self.params, self._views(value)):
                    optimizer_state[p][name] = view
            else:
                for p in self.params:
                    optimizer_state[p][name] = value
        self._published = {k: v for k, v in self.state.items() if torch.is_tensor(v)}


class _ChunkState(dict):
    """A chunk's running statistics (saved), plus unsaved scratch buffers shaped like ``g``."""

    def __init__(self, like: Tensor):
        super().__init__()
        self._like, self._scratch = like, {}

    def scratch(self, name: str) -> Tensor:
        if name not in self._scratch:
            self._scratch[name] = torch.empty_like(self._like)
        return self._scratch[name]
