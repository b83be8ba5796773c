"""Keep BatchNorm running statistics out of SAM's perturbed forward pass."""
from contextlib import contextmanager

from torch import nn

__all__ = ["frozen_bn_stats"]


@contextmanager
def frozen_bn_stats(model: nn.Module):
    """Inside this context, BatchNorm layers in train mode still normalize with batch statistics,
    but leave ``running_mean``, ``running_var`` and ``num_batches_tracked`` untouched.

    Use it around the forward pass at :math:`w+\\epsilon`, so running statistics are updated once per
    SAM step, from the unperturbed pass::

        with frozen_bn_stats(model):
            loss_fn(model(x), y).backward()
    """
    layers = [m for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
    for m in layers:
        m.track_running_stats = False  # train mode then normalizes by batch stats and updates nothing
    try:
        yield model
    finally:
        for m in layers:
            m.track_running_stats = True
