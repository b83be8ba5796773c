r"""SAM (Foret et al., ICLR 2021): the identity preconditioner."""
from .base import PreconditionedSAM

__all__ = ["SAM"]


class SAM(PreconditionedSAM):
    r"""Sharpness-aware minimization.

    .. math::

        \epsilon = \rho\,\frac{g}{\|g\|}, \qquad w \leftarrow \mathrm{base\_step}\big(w,\ \nabla L(w+\epsilon)\big).

    The first-order solution of :math:`\max_{\|\epsilon\|_2\le\rho} L(w+\epsilon)`. In preSAM terms:
    :math:`\hat g = g`, no preconditioner. Every hook keeps its default.

    Example::

        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        loss_fn(model(x), y).backward()
        opt.first_step(zero_grad=True)
        with frozen_bn_stats(model):
            loss_fn(model(x), y).backward()
        opt.second_step(zero_grad=True)
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, **base_kwargs):
        super().__init__(params, base_optimizer, rho=rho, **base_kwargs)
