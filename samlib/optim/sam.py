r"""SAM (Foret et al., ICLR 2021): the identity preconditioner."""
from .base import PreconditionedSAM

__all__ = ["SAM"]


class SAM(PreconditionedSAM):
    r"""Sharpness-aware minimization.

    .. math::

        \epsilon = \rho\,\frac{g}{\|g\|}, \qquad w \leftarrow \mathrm{base\_step}\big(w,\ \nabla L(w+\epsilon)\big).

    The first-order solution of :math:`\max_{\|\epsilon\|_2\le\rho} L(w+\epsilon)`. In preSAM terms:
    :math:`\hat g = g`, no preconditioner (``preconditioning = None``). Every hook keeps its
    default, so SAM runs on the parameters' own tensors with multi-tensor kernels (one norm, one
    multiply, one add; :math:`w+\epsilon` is a transient buffer), except that a chunk of small
    tensors (fewer than :math:`2^{15}` elements on average) is gathered into one flat buffer, which
    is cheaper when per-tensor overhead dominates. Either way SAM holds at most one copy of the
    parameters between steps.

    Example (two-step API)::

        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        loss_fn(model(x), y).backward()
        opt.first_step(zero_grad=True)
        with frozen_bn_stats(model):
            loss_fn(model(x), y).backward()
        opt.second_step(zero_grad=True)

    The same step with a closure: ``opt.step(lambda: loss_fn(model(x), y).backward())`` (the
    closure may return the loss; ``step`` zeroes the grads before each call).
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, **kwargs):
        super().__init__(params, base_optimizer, rho, **kwargs)
