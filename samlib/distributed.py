"""SAM at scale with PyTorch's own machinery: mixed precision, DistributedDataParallel, m-sharpness.

Nothing here replaces torch: these are the few lines a SAM step needs on top of
``torch.amp`` and ``torch.nn.parallel.DistributedDataParallel``.

* :func:`sam_step` — one SAM step for a plain model or a DDP model, with the perturbation built
  ``"local"``-ly (each rank from its own minibatch gradient, computed inside ``no_sync()``: the
  original SAM's m-sharpness with m = the per-rank batch) or ``"synced"`` (the first-pass gradient
  is all-reduced, so every rank uses the same perturbation). The second pass always all-reduces.
* :func:`amp_sam_step` — the same with ``torch.autocast`` and a ``torch.amp.GradScaler``: the
  perturbation is built from *unscaled* gradients, an inf/NaN first pass skips the perturbation
  (and leaves the running statistics untouched), and the scaler's own skip logic protects the
  base step. bf16 autocast needs no scaler: pass ``scaler=None``.
* :func:`m_sharpness_step` — single-process m-sharpness: split the batch into chunks of ``m``,
  perturb each chunk with its own epsilon, average the perturbed gradients. With a stateless
  direction rule (SAM, ASAM, Fisher-SAM) it computes exactly what ``"local"`` DDP computes with
  ``m`` examples per rank, so DDP results can be checked on one process.

Running statistics (VaSSO, Friendly-SAM, InfoSAM, SSAM) under DDP: in ``"synced"`` mode every
rank feeds its optimizer the same all-reduced gradient, so the statistics are identical on all
ranks (and a checkpoint from rank 0 is complete). In ``"local"`` mode each rank's statistics
track its own minibatch gradients, i.e. the noise its own perturbation sees; they differ across
ranks by design (save each rank's ``state_dict()`` to resume exactly). In
:func:`m_sharpness_step` one optimizer sees every chunk, so its statistics advance once per chunk.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch import nn

from .optim import PreconditionedSAM, frozen_bn_stats

__all__ = ["sam_step", "amp_sam_step", "m_sharpness_step", "init_from_env", "is_rank_zero", "world"]


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_rank_zero() -> bool:
    return world()[0] == 0


def init_from_env() -> bool:
    """Initialize torch.distributed from torchrun's environment (``WORLD_SIZE`` > 1); True if it did.

    Uses NCCL when CUDA is available (one GPU per local rank), else gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def _check_mode(mode: str):
    if mode not in ("local", "synced"):
        raise ValueError(f"Invalid perturbation mode {mode!r}. Choose 'local' (per-rank epsilon) or 'synced'.")


def _first_pass_context(model: nn.Module, mode: str):
    if mode == "local" and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def sam_step(model: nn.Module, opt: PreconditionedSAM, loss_fn, x, y, mode: str = "local"):
    """One SAM step (forward-backward at w, perturb, forward-backward at w + eps, base step).

    ``model`` may be wrapped in DDP; ``mode`` chooses how the perturbation is built (module doc).
    Returns the loss and the model's output at w (detached tensors; no host sync).
    """
    _check_mode(mode)
    with _first_pass_context(model, mode):
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
    opt.first_step(zero_grad=True)
    with frozen_bn_stats(model):
        loss_fn(model(x), y).backward()       # DDP all-reduces this gradient
    opt.second_step(zero_grad=True)
    return loss.detach(), out.detach()


def _grads(opt):
    return [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]


def _unscale_and_check(grads: list, scaler: torch.amp.GradScaler) -> torch.Tensor:
    """Unscale ``grads`` in place and return a device flag, > 0 if any is inf/NaN: one fused multi-tensor
    kernel per device and dtype (the one ``GradScaler.unscale_`` uses), no host sync."""
    inv_scale = scaler._get_scale_async().double().reciprocal().float()   # get_scale() would sync
    groups: dict = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    found = []
    for (device, _), tensors in groups.items():
        flag = torch.zeros(1, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, flag, inv_scale.to(device, non_blocking=True))
        found.append(flag)
    if not found:
        return torch.zeros(1)
    return torch.stack([f.to(found[0].device, non_blocking=True) for f in found]).sum()


def amp_sam_step(model: nn.Module, opt: PreconditionedSAM, loss_fn, x, y, scaler: torch.amp.GradScaler | None = None,
                 dtype: torch.dtype = torch.float16, mode: str = "local"):
    """One SAM step under ``torch.autocast(dtype)``, with an optional ``GradScaler`` (needed for fp16).

    Returns ``(loss at w, output at w, perturbed)``; ``perturbed`` is False when the first pass
    overflowed and the perturbation was skipped (the running statistics are then left alone).

    Host synchronizations per step: with a scaler, 2 on one device: this helper's overflow check
    of the first pass (one fused unscale-and-check kernel per device and dtype, then one read of
    the flag, needed to decide whether to perturb) and ``GradScaler.step``'s own check of the
    second pass (one per device). Without a scaler (bf16), none.
    """
    _check_mode(mode)
    device_type = next(model.parameters()).device.type
    with _first_pass_context(model, mode):
        with torch.autocast(device_type, dtype=dtype):
            out = model(x)
            loss = loss_fn(out, y)
        (scaler.scale(loss) if scaler is not None else loss).backward()
    perturbed = True
    if scaler is not None and scaler.is_enabled():
        perturbed = not bool(_unscale_and_check(_grads(opt), scaler))   # the unscaled gradients build eps
    if perturbed:
        opt.first_step(zero_grad=True)
    else:
        opt.zero_grad()                                # no perturbation, running statistics untouched
    with frozen_bn_stats(model):
        with torch.autocast(device_type, dtype=dtype):
            loss2 = loss_fn(model(x), y)
        (scaler.scale(loss2) if scaler is not None else loss2).backward()
    opt.restore()                                      # exact w (no-op when not perturbed)
    if scaler is not None:
        opt.base_step(lambda: scaler.step(opt.base_optimizer))   # unscales; skips the step on inf/NaN
        scaler.update()
    else:
        opt.base_step()
    opt.zero_grad()
    return loss.detach(), out.detach(), perturbed


def m_sharpness_step(model: nn.Module, opt: PreconditionedSAM, loss_fn, x, y, m: int):
    """Single-process m-sharpness: each chunk of ``m`` examples gets its own perturbation.

    The base optimizer steps with the mean over chunks of the gradient at ``w + eps_chunk``
    (the chunks' mean losses are averaged, as DDP averages per-rank gradients); a parameter that
    gets no gradient in any chunk keeps ``grad = None``, as in :func:`sam_step`, so weight decay and
    momentum leave it alone. Returns the mean loss and the outputs at w.

    Single process only: a DDP model would all-reduce every chunk's first pass (so the per-chunk
    perturbations would silently become one synced one); under DDP, ``sam_step(mode="local")`` is
    m-sharpness with m = the per-rank batch.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise ValueError("m_sharpness_step runs on one process and got a DistributedDataParallel model. Under DDP, "
                         "use sam_step(..., mode='local'): each rank's perturbation is m-sharpness with m = its batch.")
    if len(x) % m:
        raise ValueError(f"Invalid m: {m}. The batch of {len(x)} must split into chunks of m examples.")
    params = [p for g in opt.param_groups for p in g["params"]]
    totals: dict = {}                                  # only parameters that got a gradient in some chunk
    losses, outs = [], []
    chunks = len(x) // m
    for xc, yc in zip(x.split(m), y.split(m)):
        opt.zero_grad()
        out = model(xc)
        loss = loss_fn(out, yc)
        loss.backward()
        losses.append(loss.detach())
        outs.append(out.detach())
        opt.first_step(zero_grad=True)
        with frozen_bn_stats(model):
            loss_fn(model(xc), yc).backward()
        opt.restore()
        with_grad = [p for p in params if p.grad is not None]
        for p in with_grad:
            if p not in totals:
                totals[p] = torch.zeros_like(p)
        torch._foreach_add_([totals[p] for p in with_grad], [p.grad for p in with_grad], alpha=1.0 / chunks)
    for p in params:
        p.grad = totals.get(p)
    opt.base_step()
    opt.zero_grad()
    return torch.stack(losses).mean(), torch.cat(outs)
