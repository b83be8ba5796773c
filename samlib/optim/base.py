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

Norms are global over all parameters (and devices). A variant overrides only :meth:`init_state`,
:meth:`gradient_estimate` and :meth:`preconditioner` (which returns :math:`C^{-1}` for CP and
:math:`P` for OP). The hooks see each parameter group as flat 1-D tensors (one *chunk* per device
and dtype, see :mod:`samlib.optim._flat` for how statistics are gathered and published), so a
variant's arithmetic costs a handful of kernels whatever the number of parameter tensors, and its
code reads like its formula. SAM itself overrides nothing and runs on the parameters' own tensors
with multi-tensor (``foreach``) kernels, without any flat copy.
"""
from __future__ import annotations

import inspect
import operator
import warnings
from collections import defaultdict
from itertools import chain

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from ._flat import Chunk, layout_key

__all__ = ["PreconditionedSAM", "check_range", "STATE_PREFIX"]

#: Prefix of the variant's statistics in :meth:`PreconditionedSAM.state_dict` (``"samlib.m"``), which
#: keeps them apart from the base optimizer's keys (Adam's ``"step"``, ...) in one plain state dict.
STATE_PREFIX = "samlib."


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
    r"""Base class of the preSAM family: :math:`\epsilon = \rho\, d/\|n\|`.

    .. code-block:: text

        input: w (params), rho, base optimizer B, hooks init_state, gradient_estimate (ĝ), preconditioner (c)
        first_step   (gradient g = ∇L(w) in .grad)
            if the statistics of a parameter are new: init_state(g)    (slice by slice, see _flat)
            ĝ ← gradient_estimate(g);   c ← preconditioner(g)          (c = None: identity)
            n ← c ⊙ ĝ;   d ← n (OP) | c ⊙ n (CP)
            ε ← s·d,  s = ±rho/‖n‖ over all groups and devices (− when B maximizes),
                      s = 0 when ‖n‖ is 0, inf or NaN
            w ← w + ε                         (storage swap; or in place with inplace=True)
        second_step  (gradient ∇L(w + ε) in .grad)
            w ← the stored w, bit for bit;   B.step()

    Args:
        params: iterable of parameters or dicts defining parameter groups (per-group ``rho`` and
            variant hyperparameters are allowed, as in ``torch.optim``).
        base_optimizer: an optimizer *class*, e.g. ``torch.optim.SGD``; it takes the descent step.
        rho: neighbourhood radius, ``>= 0``. ``rho=0`` reproduces the base optimizer.
        variant_defaults: the variant's own hyperparameters (subclasses pass these).
        base_kwargs: the base optimizer's arguments, as a dict. Needed only when the base optimizer
            takes an argument with the name of one of SAM's (``torch.optim.Adadelta``'s ``rho``):
            ``SAM(params, torch.optim.Adadelta, rho=0.05, base_kwargs={"rho": 0.9, "lr": 1.0})``.
            SAM's own hyperparameters are then stored in the groups under ``"sam_<name>"``
            (``group["sam_rho"]``), the base optimizer's under their own names. Without
            ``base_kwargs``, such a clash raises ``TypeError`` at construction.
        compile: run the variant's flat arithmetic (hooks, :math:`n`, :math:`\|n\|`, :math:`d`)
            through ``torch.compile``, which fuses it into a few kernels (InfoSAM on the course's
            CPU: 2.4x less time in its own arithmetic, see ``python -m samlib.bench``). Needs a
            working ``torch.compile`` (a C++ compiler on CPU); each chunk shape compiles once, and
            torch.compile's recompilation limit applies across optimizer instances.
        inplace: perturb the parameters in place and copy :math:`w` back afterwards (address
            stable: for CUDA graphs, pre-packed weights, views cached before ``first_step``), at
            the cost of one persistent copy of :math:`w` and two more memory passes. The default
            points each parameter at a buffer holding :math:`w+\epsilon` instead (storage swap).
        **kwargs: passed to ``base_optimizer`` (``lr``, ``momentum``, ``weight_decay``, ...).

    The wrapper and the base optimizer share ``param_groups``, so an LR scheduler may be attached
    to either; add groups through the wrapper's :meth:`add_param_group` (it fills in and checks
    SAM's hyperparameters). The base optimizer's ``maximize=True`` flips :math:`\epsilon`. Two
    ways to step, which give the same result:

    * two-step: ``loss.backward(); opt.first_step(zero_grad=True); loss_fn().backward();
      opt.second_step(zero_grad=True)``;
    * closure: ``opt.step(closure)``, where the closure runs forward and backward and returns the
      loss (zeroing the grads in it is optional: ``step`` zeroes them before each call).

    Step hooks (``register_step_pre_hook``/``post_hook``) fire once per SAM step with either API:
    the pre-hooks when ``first_step`` starts, the post-hooks when ``second_step`` ends. Loops that
    call ``optimizer.step()`` without a closure (Hugging Face ``Trainer``, a ``GradScaler``'s
    ``scaler.step(opt)``) cannot drive SAM, which needs a second forward-backward pass: use the
    two-step API, ``samlib.distributed.amp_sam_step``, or a closure. The base optimizer's
    ``foreach``/``fused``/``capturable`` flags apply to its own step; SAM's part makes no host
    synchronization and uses multi-tensor kernels regardless. ``compile=True`` fuses a variant's
    flat arithmetic with ``torch.compile`` (the first step compiles: seconds to minutes).

    **The storage swap and aliases.** By default :meth:`first_step` points ``p.data`` at a
    buffer holding :math:`w+\epsilon` and leaves ``p``'s own storage, which holds :math:`w`,
    untouched; :meth:`second_step` points it back (exact and free). Anything that holds the old
    storage (a view or ``p.detach()`` taken before ``first_step``, a numpy/DLPack export, a
    captured CUDA graph, pre-packed weights, FSDP1/ZeRO-3 flat parameters) keeps reading
    :math:`w` in the perturbed pass, so for those layers the step is plain SGD. Use
    ``inplace=True`` there. Memory format (``channels_last``) is kept in both modes.

    **Not supported** (clear errors): complex parameters, sparse gradients, DTensor parameters
    (FSDP2, tensor parallel). Non-finite gradients give a non-finite :math:`w+\epsilon` at their
    coordinates (and :math:`\epsilon = 0` elsewhere); :math:`w` is restored exactly either way.
    """

    #: ``None`` (no preconditioner: the identity), ``"CP"`` (constraint) or ``"OP"`` (objective).
    preconditioning: str | None = None
    #: Whether the hooks read ``w``; otherwise the weights are not gathered (saving a pass over memory).
    uses_weights = False

    def __init__(self, params, base_optimizer, rho: float = 0.05, variant_defaults: dict | None = None, *,
                 base_kwargs: dict | None = None, inplace: bool = False, compile: bool = False, **kwargs):
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer)):
            raise TypeError(
                f"base_optimizer must be an optimizer class such as torch.optim.SGD, got "
                f"{base_optimizer!r}. Pass the class and its arguments: "
                f"{type(self).__name__}(params, torch.optim.SGD, lr=0.1, momentum=0.9)."
            )
        sam_defaults = dict(rho=rho, **(variant_defaults or {}))
        clash = sorted(set(sam_defaults) & _init_arguments(base_optimizer))
        if clash and base_kwargs is None:
            names = ", ".join(repr(n) for n in clash)
            raise TypeError(
                f"{base_optimizer.__name__} takes its own {names}, and the parameter groups are shared with "
                f"{type(self).__name__}, so one value would silently serve both. Pass the base optimizer's "
                f"arguments as a dict: {type(self).__name__}(params, {base_optimizer.__name__}, "
                f"{clash[0]}=..., base_kwargs={{{clash[0]!r}: ..., 'lr': ...}}); {type(self).__name__}'s "
                f"own values are then stored in the groups as {', '.join(repr('sam_' + n) for n in clash)}."
            )
        duplicated = set(kwargs) & set(base_kwargs or {})
        if duplicated:
            raise TypeError(f"{sorted(duplicated)} given both as keyword arguments and in base_kwargs; give each once.")
        #: group key of each SAM hyperparameter (``"sam_rho"`` when the base optimizer has its own ``rho``)
        self._keys = {name: (f"sam_{name}" if name in clash else name) for name in sam_defaults}
        self._sam_defaults = {self._keys[k]: v for k, v in sam_defaults.items()}
        self._check_group(self._sam_defaults)
        self._inplace = bool(inplace)
        self._compile = bool(compile)
        self._chunks: dict = {}
        self._groups: dict = {}             # group index -> (params with grad, their data pointers, chunk keys)
        self._perturbed = None
        self._in_step = False
        self._warned_autocast = False
        super().__init__(params, dict(self._sam_defaults))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs, **(base_kwargs or {}))
        # the base optimizer's add_param_group mutated the same dicts, so both optimizers share them
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    # ---- the hooks a variant overrides ------------------------------------------------------

    def check_hyperparameters(self, group: dict):
        """Raise ``ValueError`` naming a variant hyperparameter of ``group`` that is out of range."""

    def init_state(self, g: Tensor, w: Tensor, state: dict, group: dict):
        r"""Initial running statistics for the coordinates of ``g`` (e.g. ``state["m"] = g.clone()``).

        Called on a whole chunk when it is built; the saved statistics of parameters that have
        some are then restored over it (see :mod:`samlib.optim._flat`). The update rule of
        :meth:`gradient_estimate` then runs on every coordinate, so it should leave initialized
        values unchanged (an EMA started at :math:`g` does), or read ``state.fresh``.
        """

    def gradient_estimate(self, g: Tensor, w: Tensor, state: dict, group: dict) -> Tensor:
        r"""The gradient estimate :math:`\hat g` the perturbation follows. Default: the raw :math:`g`.

        ``g`` and ``w`` are one chunk's gradient and weights, flattened (``g`` may be returned but
        not modified; ``w`` is ``None`` unless the class sets ``uses_weights = True``). ``state``
        persists across steps; tensors stored in it must be flat like ``g`` and are exposed per
        parameter in ``self.state[p]``. ``state.scratch(name)`` is a working buffer like ``g`` for
        this step only. ``group`` holds the group's hyperparameters under SAM's names.
        """
        return g

    def preconditioner(self, g: Tensor, w: Tensor, state: dict, group: dict) -> Tensor | None:
        r"""The diagonal preconditioner: :math:`C^{-1}` (CP) or :math:`P` (OP); ``None`` is the identity.

        Called after :meth:`gradient_estimate` with the same arguments, unless the class's
        ``preconditioning`` is ``None``.
        """
        return None

    # ---- construction and groups -----------------------------------------------------------

    def add_param_group(self, param_group: dict):
        """Add a parameter group through the wrapper: SAM's hyperparameters are filled in and checked,
        and the group is shared with the base optimizer."""
        base = self.__dict__.get("base_optimizer")
        if base is None:                           # during construction: the wrapper's own defaults
            super().add_param_group(param_group)
            self._check_group(self.param_groups[-1])
        else:
            for key, value in self._sam_defaults.items():
                param_group.setdefault(key, value)
            self._check_group(param_group)         # before the group joins the shared list
            params = param_group["params"]
            param_group["params"] = [params] if isinstance(params, Tensor) else list(params)
            for p in param_group["params"]:
                _check_parameter(p)
            base.add_param_group(param_group)      # appends to the shared list
        for p in self.param_groups[-1]["params"]:
            _check_parameter(p)

    def _check_group(self, group: dict):
        hp = self._hyper(group)
        check_range("rho", hp["rho"], 0.0)
        self.check_hyperparameters(hp)

    def _hyper(self, group: dict) -> dict:
        """The group's hyperparameters under SAM's names (``group`` itself unless some were renamed)."""
        if all(k == v for k, v in self._keys.items()):
            return group
        hp = dict(group)
        hp.update({name: group[key] for name, key in self._keys.items()})
        return hp

    # ---- the scheme ------------------------------------------------------------------------

    @property
    def _uses_hooks(self) -> bool:
        cls = type(self)
        return (self.uses_weights or cls.gradient_estimate is not PreconditionedSAM.gradient_estimate
                or (self.preconditioning is not None and cls.preconditioner is not PreconditionedSAM.preconditioner))

    def _current_chunks(self) -> list[tuple[dict, Chunk]]:
        """The chunks of the parameters that have a gradient now: reused while each group's list of such
        parameters and their storages are unchanged (cheap to check), rebuilt otherwise."""
        chunks, seen = [], set()
        for gi, group in enumerate(self.param_groups):
            if self._keys["rho"] not in group:
                raise KeyError(
                    f"Parameter group {gi} has no {self._keys['rho']!r}: it was added with "
                    "base_optimizer.add_param_group(). Add groups with the wrapper's add_param_group().")
            with_grad = [p for p in group["params"] if p.grad is not None]
            ptrs = [p.data_ptr() for p in with_grad]
            cached = self._groups.get(gi)
            if cached is None or not (len(cached[0]) == len(with_grad) and all(map(operator.is_, cached[0], with_grad))
                                      and cached[1] == ptrs):
                cached = self._groups[gi] = (with_grad, ptrs, self._regroup(gi, with_grad))
            for key in cached[2]:
                seen.add(key)
                chunks.append((group, self._chunks[key]))
        for key in [k for k in self._chunks if k not in seen]:
            self._chunks.pop(key).release(self.state)   # stale (e.g. after model.double()): free its buffers
        return chunks

    def _regroup(self, gi: int, with_grad: list[Tensor]) -> list:
        by_kind: dict = {}
        for p in with_grad:
            by_kind.setdefault((p.device, p.dtype), {})[id(p)] = p      # each parameter once
        keys = []
        for kind, unique in by_kind.items():
            params, key = list(unique.values()), (gi, kind)
            chunk = self._chunks.get(key)
            if chunk is None or chunk.key != layout_key(params):
                self._chunks[key] = self._new_chunk(params, chunk)
            keys.append(key)
        return keys

    def _new_chunk(self, params: list[Tensor], old: Chunk | None) -> Chunk:
        for p in params:
            _check_parameter(p)
            if p.grad.layout != torch.strided:
                raise RuntimeError(
                    f"{type(self).__name__} got a sparse gradient for a parameter of shape {tuple(p.shape)} "
                    "(e.g. nn.Embedding(sparse=True)). SAM needs dense gradients: use sparse=False.")
        small = sum(p.numel() for p in params) < _FLAT_BELOW * len(params)
        chunk = Chunk(params, flat=self._uses_hooks or small)
        if old is not None:
            old.release(self.state, keep={id(p) for p in params})
        if not chunk.flat:
            for p in params:
                self.state[p]   # an entry for every parameter: torch.distributed.checkpoint then sees a state
        return chunk

    def _prepare(self, group: dict, chunk: Chunk):
        """Gather a flat chunk's g (and w) and build its statistics if needed; return (g, w, hp)."""
        hp = self._hyper(group)
        g = chunk.gather_grad()
        w = chunk.gather_weights() if self.uses_weights else None
        if chunk.state is None:
            chunk.build_state(self.state, lambda g_, w_, st: self.init_state(g_, w_, st, hp), g, w)
        return g, w, hp

    def _perturb(self) -> list[tuple[Chunk, list[Tensor]]]:
        r"""Compute :math:`\epsilon` for every chunk with gradients: ``[(chunk, eps tensors)]``."""
        parts = []
        for group, chunk in self._current_chunks():
            if chunk.flat:
                g, w, hp = self._prepare(group, chunk)
                fused = self._compile and chunk.state.fresh is None      # fresh steps run eagerly (once)
                direction = self._compiled_direction() if fused else self._direction
                d, norm = direction(g, w, chunk.state, hp, chunk.work)
                chunk.publish(self.state)
            else:                                                             # SAM: d = n = g, no flat copy
                hp, d = self._hyper(group), chunk.grads()
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(d, 2, dtype=_acc(chunk.dtype))))
            rho = -hp["rho"] if group.get("maximize", False) else hp["rho"]
            parts.append((chunk, d, norm, rho))
        if not parts:
            return []
        total = _global_norm([norm for _, _, norm, _ in parts])
        out = []
        for chunk, d, _, rho in parts:
            s = (rho / total).nan_to_num_(0.0, 0.0, 0.0).to(chunk.device, non_blocking=True)   # 0 if ||n|| is 0/inf/NaN
            if chunk.flat:
                torch.mul(d, s.to(chunk.dtype), out=chunk.work)   # eps = s d, in the working buffer
                out.append((chunk, chunk.work_views))
            else:
                out.append((chunk, torch._foreach_mul(d, s.to(chunk.dtype))))
        return out

    def _direction(self, g: Tensor, w: Tensor | None, state, hp: dict, work: Tensor) -> tuple[Tensor, Tensor]:
        r"""One flat chunk's :math:`d` and :math:`\|n\|` from the hooks (the part ``compile=True`` fuses)."""
        g_hat = self.gradient_estimate(g, w, state, hp)
        c = self.preconditioner(g, w, state, hp) if self.preconditioning is not None else None
        n = g_hat if c is None else torch.mul(g_hat, c, out=work)           # OP: d = n = P g; CP: n = C^{-1} g
        norm = torch.linalg.vector_norm(n, dtype=_acc(n.dtype))
        d = n.mul_(c) if c is not None and self.preconditioning == "CP" else n   # CP: d = C^{-1} n
        state.end_step()                       # scratch buffers die here (compiled: never materialized)
        return d, norm

    def _compiled_direction(self):
        fn = self.__dict__.get("_compiled_fn")
        if fn is None:
            fn = self._compiled_fn = torch.compile(self._direction)
        return fn

    @torch.no_grad()
    def perturbation(self) -> list[tuple[list[Tensor], list[Tensor]]]:
        r"""Compute :math:`\epsilon` for every parameter with a gradient, without moving anything.

        Returns ``(params, eps)`` pairs, one per parameter group (and device/dtype); ``eps`` may
        be views into a buffer that the next call overwrites. Advances the variant's running
        statistics by one step. A zero or non-finite :math:`\|n\|` gives :math:`\epsilon = 0`
        (where :math:`d` is finite), with no host synchronization.
        """
        return [(chunk.params, eps) for chunk, eps in self._perturb()]

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False):
        r"""Move every parameter with a gradient from :math:`w` to :math:`w+\epsilon`. Needs ``.grad`` at :math:`w`.

        By default each parameter is pointed at a buffer holding :math:`w+\epsilon` (same shape,
        strides and dtype); its own storage, and so :math:`w` itself, is left untouched until
        :meth:`second_step` or :meth:`restore` points it back (see the class docstring on aliases).
        With ``inplace=True``, :math:`w` is copied aside and :math:`\epsilon` added in place.
        ``zero_grad=True`` sets the grads to ``None``. Makes no host synchronization.
        """
        if self._perturbed is not None:
            raise RuntimeError(
                "first_step() was called twice without second_step() in between: the parameters are still at "
                "w + eps and the running statistics would advance twice. Call second_step(), or restore() to "
                "abandon this step (e.g. after an exception in the perturbed pass).")
        if not self._in_step:
            _call_hooks(_global_optimizer_pre_hooks, self._optimizer_step_pre_hooks, self)
        self._warn_if_autocast()
        perturbed = []
        for chunk, eps in self._perturb():
            if self._inplace:
                chunk.save_weights()
                torch._foreach_add_(chunk.params, eps)
                perturbed.append(chunk)
                continue
            torch._foreach_add_(eps, chunk.params)                 # eps now holds w + eps
            if chunk.flat and chunk.dtype != chunk.param_dtype:    # 16-bit parameters, float32 arithmetic
                eps = chunk.views(chunk.work.to(chunk.param_dtype))
            for p, original, w_plus in zip(chunk.params, chunk.data(), eps):
                perturbed.append((p, original))
                p.data = w_plus
        self._perturbed = perturbed
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self):
        r"""Put every parameter back at :math:`w`, bit for bit (a no-op if nothing is perturbed)."""
        if not self._perturbed:
            self._perturbed = None
            return
        if self._inplace:
            for chunk in self._perturbed:
                torch._foreach_copy_(chunk.params, chunk.saved_views)
        else:
            for p, original in reversed(self._perturbed):
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
        if not self._in_step:
            _call_hooks(self._optimizer_step_post_hooks, _global_optimizer_post_hooks, self)

    def base_step(self, step=None):
        """Step the base optimizer at the restored :math:`w`: ``step()`` if given (e.g. a GradScaler's
        ``lambda: scaler.step(opt.base_optimizer)``), else ``base_optimizer.step()``. For helpers
        that run the passes themselves (``samlib.distributed``); it also tells an LR scheduler
        attached to this wrapper that a step happened."""
        (step or self.base_optimizer.step)()
        self._opt_called = True

    def step(self, closure=None):
        """One SAM step with a closure that runs forward and backward and returns the loss.

        The grads are zeroed before each of the two calls, so a closure that zeroes them (torch
        style) and one that does not (the davda54/sam style, even after the caller's own
        ``backward()``) give the two-step result exactly. Returns the loss at :math:`w`.

        ``step()`` without a closure raises, except in ``torch.distributed.checkpoint``'s lazy
        state initialization (every learning rate 0, every gradient zero), where it creates the
        base optimizer's and the variant's state without moving any parameter.
        """
        if closure is None:
            if self._is_lazy_state_init():
                self._init_all_state()
                return None
            raise RuntimeError(
                f"{type(self).__name__}.step() requires a closure: it must evaluate the loss twice, at w "
                "and at w + eps. Pass step(closure) where the closure runs forward and backward and returns "
                "the loss; or call first_step() and second_step() yourself."
            )
        closure = torch.enable_grad()(closure)
        self.zero_grad()                    # grads left from outside (the davda54 idiom) are not ours
        loss = closure()
        self._in_step = True                # step()'s own wrapper fires the step hooks
        try:
            self.first_step(zero_grad=True)
            closure()
            self.second_step()
        finally:
            self._in_step = False
        return loss

    def _is_lazy_state_init(self) -> bool:
        lrs = [group["lr"] for group in self.param_groups if "lr" in group]
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        return bool(lrs) and all(float(lr) == 0.0 for lr in lrs) and all(not bool(g.any()) for g in grads)

    @torch.no_grad()
    def _init_all_state(self):
        for group, chunk in self._current_chunks():
            if chunk.flat:
                self._prepare(group, chunk)
                chunk.publish(self.state)
        self.base_step()

    def _warn_if_autocast(self):
        if not self._warned_autocast and _autocast_enabled():
            self._warned_autocast = True
            warnings.warn(
                "first_step() ran inside a torch.autocast region. autocast caches the low-precision copy of each "
                "weight for the whole region, so a perturbed forward pass in the same region reuses the copy of w. "
                "Leave the region before first_step() and enter a new one for the second pass (amp_sam_step does).",
                stacklevel=3)

    # ---- state ------------------------------------------------------------------------------

    def state_dict(self):
        """A plain ``torch.optim`` state dict (``state``, ``param_groups``): the base optimizer's state
        (momentum, ...) and the variant's running statistics, prefixed ``"samlib."`` per parameter."""
        out = self.base_optimizer.state_dict()
        index = {id(p): i for i, p in enumerate(chain.from_iterable(g["params"] for g in self.param_groups))}
        for p, st in self.state.items():
            if st and id(p) in index:
                i = index[id(p)]
                entry = dict(out["state"].get(i, {}))     # a copy: never write into the base's own dict
                entry.update({STATE_PREFIX + k: v for k, v in st.items()})
                out["state"][i] = entry
        return out

    def load_state_dict(self, state_dict):
        """Load a state dict from :meth:`state_dict` (or from samlib's older nested format, or a plain
        state dict of the base optimizer, whose groups then keep SAM's current hyperparameters)."""
        if self._perturbed is not None:
            raise RuntimeError("load_state_dict() between first_step() and second_step(): call restore() first.")
        if "base_optimizer" in state_dict:                # samlib's older format: {state, param_groups, base_optimizer}
            variant, base = state_dict["state"], state_dict["base_optimizer"]
        else:
            variant, base_state = {}, {}
            for key, entry in state_dict["state"].items():
                base_state[key] = {k: v for k, v in entry.items() if not k.startswith(STATE_PREFIX)}
                ours = {k[len(STATE_PREFIX):]: v for k, v in entry.items() if k.startswith(STATE_PREFIX)}
                if ours:
                    variant[key] = ours
            base = {"state": base_state, "param_groups": state_dict["param_groups"]}
        current = [{k: g[k] for k in self._sam_defaults} for g in self.param_groups]
        params = list(chain.from_iterable(g["params"] for g in self.param_groups))
        self.base_optimizer.load_state_dict(base)
        self.param_groups = self.base_optimizer.param_groups
        for group, mine in zip(self.param_groups, current):
            for k, v in mine.items():
                group.setdefault(k, v)
            self._check_group(group)
        saved_ids = chain.from_iterable(g["params"] for g in base["param_groups"])
        id_map = dict(zip(saved_ids, params))
        self.state = defaultdict(dict)
        for key, st in variant.items():
            if key in id_map:
                p = id_map[key]
                self.state[p] = {k: v.to(p.device) if torch.is_tensor(v) else v for k, v in st.items()}
        self._chunks, self._groups = {}, {}    # regathered from the loaded per-parameter state at the next step

    def memory_stats(self) -> dict[str, int]:
        """Bytes this optimizer holds between steps: working buffers and running statistics (the base
        optimizer's state is not included)."""
        total = {"working_buffers": 0, "running_stats": 0}
        in_chunks = set()
        for chunk in self._chunks.values():
            for k, v in chunk.nbytes().items():
                total[k] += v
            in_chunks.update(id(p) for p in chunk.params)
        for p, st in self.state.items():      # statistics of parameters outside any chunk (standalone copies)
            if id(p) not in in_chunks:
                total["running_stats"] += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
        return total

    def __getstate__(self):
        if self._perturbed is not None:
            raise RuntimeError("Copy or pickle the optimizer between steps, "
                               "not between first_step() and second_step().")
        keep = ("defaults", "state", "param_groups", "base_optimizer", "_keys", "_sam_defaults", "_inplace", "_compile")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state):
        super().__setstate__(state)
        self.param_groups = self.base_optimizer.param_groups
        self._chunks, self._groups, self._perturbed, self._in_step, self._warned_autocast = {}, {}, None, False, False

    def __repr__(self):
        return f"{type(self).__name__}({self.preconditioning or 'no preconditioner'}, base={self.base_optimizer!r})"


#: SAM gathers a chunk into a flat buffer when its tensors average fewer elements than this: many small
#: tensors then cost one copy instead of one per-tensor dispatch per operation (host-bound); large
#: tensors take the multi-tensor path without the copy (bandwidth-bound), see samlib.bench.
_FLAT_BELOW = 2 ** 15


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of a norm: float64 for float64, else float32 (float16 would overflow)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _global_norm(norms: list[Tensor]) -> Tensor:
    """The 2-norm of per-chunk norms that may live on different devices, on the first one's device."""
    if len(norms) == 1:
        return norms[0]
    device = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device, non_blocking=True) for n in norms]))


def _autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")
    except TypeError:                                   # torch < 2.4
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _init_arguments(cls) -> set[str]:
    try:
        return {name for name, prm in inspect.signature(cls).parameters.items()
                if prm.kind in (prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY)}
    except (TypeError, ValueError):
        return set()


def _check_parameter(p: Tensor):
    if type(p).__name__ == "DTensor" or type(getattr(p, "data", p)).__name__ == "DTensor":
        raise TypeError(
            "samlib optimizers do not support DTensor parameters (FSDP2's fully_shard, tensor parallelism): the "
            "perturbation needs a norm over all shards. Use DistributedDataParallel (samlib.distributed.sam_step).")
    if p.is_complex():
        raise TypeError(
            f"samlib optimizers do not support complex parameters (got {p.dtype}, shape {tuple(p.shape)}). "
            "Register the real view instead: nn.Parameter(torch.view_as_real(tensor)).")


def _call_hooks(first, second, optimizer):
    for hook in chain(first.values(), second.values()):
        hook(optimizer, (), {})
