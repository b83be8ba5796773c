r"""Chunks: how samlib's optimizers see parameters as flat tensors, and the rules that connect them
with the per-parameter world of ``torch.optim``.

A *chunk* is the list of parameters of one parameter group that live on one device, have one
dtype and have a gradient at this step (each parameter once, even if a group lists it twice).

**Layout.** Parameter ``i`` owns the slice ``[offset_i, offset_i + numel_i)`` of every flat tensor
of its chunk, in the parameter's *memory order*: the view of that slice has the parameter's shape
and strides, so a ``channels_last`` weight keeps its layout in the flat buffers, at
:math:`w+\epsilon`, in its gradient and in ``opt.state[p]``.

**Buffers.** A *flat* chunk (every variant with hooks; SAM when its tensors are small) keeps one
persistent working buffer ``work`` (float32 for 16-bit parameters, else the parameter dtype): it
holds :math:`g`, then :math:`d`, then :math:`\epsilon`, then, during the perturbed pass (storage
swap), :math:`w+\epsilon`. A variant that reads :math:`w` (ASAM) keeps a second one, ``weights``.
SAM on large tensors needs no flat buffer at all: it works on the parameters' own tensors with
multi-tensor kernels. ``inplace=True`` also keeps a copy of :math:`w` in ``saved``.

**Gathering rule** (run when a chunk is built: whenever the set of parameters with a gradient
changes, or a parameter gets a new storage, e.g. after ``p.data = ...`` or ``model.to(...)``, and
the new storage has another shape, layout, dtype or device; checked every step by identity and
data pointer, which costs no tensor operation):

1. the variant's ``init_state`` runs once on the whole flat gradient and gives every running
   statistic its initial value;
2. then, key by key and parameter by parameter, a slice is overwritten with the tensor saved in
   ``opt.state[p][key]`` if there is one with the parameter's number of elements (published by
   the chunk the parameter was in before, or loaded by ``load_state_dict``);
3. the coordinates that kept their initial value are *fresh*: for this one step
   ``state.fresh`` is a boolean mask of them (``None`` when every slice was restored). Updates
   that start at their target (an EMA started at :math:`g`) leave fresh values unchanged; a
   variant whose update does not reads ``state.fresh``. A non-tensor statistic (SSAM's step
   counter) has one value per chunk: the first saved value wins, else the initial one.

One new parameter therefore never resets the others' statistics.

**Publishing rule:** ``opt.state[p][key]`` is a view of ``p``'s slice of the flat statistic
(republished only when the flat tensor object changes); a non-tensor statistic is copied to every
parameter each step. Scratch buffers live for one step and are not saved. When parameters leave
a chunk (no gradient at this step, or a dropped chunk), their views are replaced by copies, so
the old chunk's buffers are freed.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Chunk", "ChunkState", "stats_dtype"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a chunk's flat arithmetic and statistics: float32 for 16-bit parameters."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def dense_strides(t: Tensor) -> tuple[int, ...]:
    """Strides of a dense tensor with ``t``'s shape and memory format (``channels_last`` kept)."""
    return torch.empty_like(t, device="meta").stride()


def layout_key(params: list[Tensor]) -> tuple:
    """What a chunk's views depend on: each parameter's identity, shape and strides."""
    return tuple((id(p), p.shape, p.stride()) for p in params)


class ChunkState(dict):
    """A chunk's running statistics (saved), plus per-step scratch buffers and the fresh mask."""

    def __init__(self, like: Tensor):
        super().__init__()
        self._like = like
        self._scratch: dict[str, Tensor] = {}
        self._constants: dict[float, Tensor] = {}
        #: boolean mask of the coordinates initialized at this step (None: every slice restored)
        self.fresh: Tensor | None = None

    def scratch(self, name: str) -> Tensor:
        """A flat working buffer like ``g``, valid for this step only (freed afterwards, not saved)."""
        buf = self._scratch.get(name)
        if buf is None:
            buf = self._scratch[name] = torch.empty_like(self._like)
        return buf

    def constant(self, value: float) -> Tensor:
        """A cached 0-dim tensor holding ``value`` (device and dtype of ``g``), e.g. for ``torch.addcdiv``."""
        t = self._constants.get(value)
        if t is None:
            t = self._constants[value] = torch.full((), value, dtype=self._like.dtype, device=self._like.device)
        return t

    def end_step(self):
        self._scratch.clear()
        self.fresh = None


class Chunk:
    """One group's parameters of one device and dtype (see the module docstring for the rules)."""

    def __init__(self, params: list[Tensor], flat: bool):
        self.params = params
        self.key = layout_key(params)
        self.sizes = [p.numel() for p in params]
        self.strides = [dense_strides(p) for p in params]
        like = params[0]
        self.device, self.param_dtype = like.device, like.dtype
        self.dtype = stats_dtype(like.dtype)
        self.numel = sum(self.sizes)
        self.flat = flat                  # whether the variant's hooks run on flat tensors
        self.work = self.work_views = None
        self.weights = self.weights_views = None
        self.saved = self.saved_views = None
        self.state: ChunkState | None = None   # built at the first step (gathering rule)
        self._published: dict[str, Tensor] = {}
        self._aliases: list[Tensor] | None = None

    # ---- layout ---------------------------------------------------------------------------

    def views(self, flat: Tensor) -> list[Tensor]:
        """Per-parameter views of a flat tensor, with each parameter's shape and strides."""
        out, offset = [], 0
        for p, n, stride in zip(self.params, self.sizes, self.strides):
            out.append(flat.as_strided(p.shape, stride, flat.storage_offset() + offset))
            offset += n
        return out

    def grads(self) -> list[Tensor]:
        return [p.grad for p in self.params]

    def data(self) -> list[Tensor]:
        """Tensors sharing each parameter's own storage (``p.data``), for the storage swap's restore.

        Cached across steps and refreshed when a parameter's data pointer moved: ``p.data`` is a
        dispatched ``detach`` per parameter, and holding the alias keeps that storage (which is
        ``p``'s anyway) alive, so an equal pointer means the same storage.
        """
        aliases = self._aliases
        if aliases is None or any(a.data_ptr() != p.data_ptr() for a, p in zip(aliases, self.params)):
            aliases = self._aliases = [p.data for p in self.params]
        return aliases

    # ---- gathering ------------------------------------------------------------------------

    def gather_grad(self) -> Tensor:
        """Copy the gradients into the flat working buffer (allocated once) and return it."""
        if self.work is None:
            self.work = torch.empty(self.numel, device=self.device, dtype=self.dtype)
            self.work_views = self.views(self.work)
        torch._foreach_copy_(self.work_views, self.grads())
        return self.work

    def gather_weights(self) -> Tensor:
        """Copy the weights into a second persistent flat buffer (variants that read ``w``) and return it."""
        if self.weights is None:
            self.weights = torch.empty_like(self.work)
            self.weights_views = self.views(self.weights)
        torch._foreach_copy_(self.weights_views, self.params)
        return self.weights

    def build_state(self, optimizer_state, init_state, g: Tensor, w: Tensor | None):
        """Build the flat statistics: initialize all, then restore every saved slice (gathering rule)."""
        self.state = state = ChunkState(g)
        init_state(g, w, state)
        saved = [optimizer_state.get(p, {}) for p in self.params]
        restored = [True] * len(self.params)
        for name, value in list(state.items()):
            if not torch.is_tensor(value):
                state[name] = next((s[name] for s in saved if name in s and not torch.is_tensor(s[name])), value)
                continue
            dst, src = [], []
            for i, (s, view, n) in enumerate(zip(saved, self.views(value), self.sizes)):
                old = s.get(name)
                if torch.is_tensor(old) and old.numel() == n:
                    dst.append(view)
                    src.append(old.reshape(view.shape) if old.shape != view.shape else old)
                else:
                    restored[i] = False
            if dst:
                torch._foreach_copy_(dst, src)
        if not all(restored):
            fresh = torch.zeros(self.numel, dtype=torch.bool, device=self.device)
            for view, ok in zip(self.views(fresh), restored):
                if not ok:
                    view.fill_(True)
            state.fresh = fresh
        for p in self.params:
            optimizer_state[p]   # an entry for every parameter: torch.distributed.checkpoint then sees a state

    # ---- publishing -----------------------------------------------------------------------

    def publish(self, optimizer_state):
        """Expose the flat statistics per parameter: views for tensors, copies for other values."""
        for name, value in self.state.items():
            if torch.is_tensor(value):
                if self._published.get(name) is value:
                    continue
                for p, view in zip(self.params, self.views(value)):
                    optimizer_state[p][name] = view
                self._published[name] = value
            else:
                for p in self.params:
                    optimizer_state[p][name] = value
        self.state.end_step()

    def release(self, optimizer_state, keep: set[int] = frozenset()):
        """Replace the published views of parameters that leave this chunk by copies."""
        for p in self.params:
            if id(p) in keep:
                continue
            st = optimizer_state.get(p)
            for name, value in self._published.items():
                if st is not None and st.get(name) is not None and st[name]._base is value:
                    st[name] = st[name].clone()

    # ---- in-place mode --------------------------------------------------------------------

    def save_weights(self):
        """Copy ``w`` into a persistent buffer (``inplace=True``): restore copies it back bit for bit."""
        if self.saved is None:
            self.saved = torch.empty(self.numel, device=self.device, dtype=self.param_dtype)
            self.saved_views = self.views(self.saved)
        torch._foreach_copy_(self.saved_views, self.params)

    def nbytes(self) -> dict[str, int]:
        """Bytes held between steps: working buffers and flat statistics."""
        buffers = [t for t in (self.work, self.weights, self.saved) if t is not None]
        stats = [v for v in (self.state or {}).values() if torch.is_tensor(v)]
        size = lambda ts: sum(t.numel() * t.element_size() for t in ts)   # noqa: E731
        return {"working_buffers": size(buffers), "running_stats": size(stats)}
