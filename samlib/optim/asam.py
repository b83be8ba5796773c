r"""ASAM (Kwon et al., ICML 2021): scale-invariant constraint preconditioning."""
import torch

from .base import PreconditionedSAM, check_range

__all__ = ["ASAM"]


class ASAM(PreconditionedSAM):
    r"""Adaptive SAM: the neighbourhood scales with the weights.

    Constraint preconditioning with :math:`C = T^{-1}`, :math:`T = \mathrm{diag}(|w| + \eta)`:

    .. math::

        \max_{\|T^{-1}\epsilon\|\le\rho} g^\top\epsilon
        \quad\Longrightarrow\quad
        \epsilon = \rho\,\frac{T^2 g}{\|T g\|}.

    Args:
        rho: radius of the rescaled neighbourhood (ASAM's paper uses 0.5 on CIFAR-10, 1.0 on CIFAR-100).
        eta: offset :math:`\eta \ge 0` that keeps :math:`T` positive where :math:`w = 0`.
    """

    preconditioning = "CP"
    uses_weights = True

    def __init__(self, params, base_optimizer, rho: float = 0.5, eta: float = 0.01, **base_kwargs):
        check_range("eta", eta, 0.0)
        super().__init__(params, base_optimizer, rho=rho, variant_defaults=dict(eta=eta), **base_kwargs)

    def preconditioner(self, g, w, state, group):
        return torch.abs(w, out=state.scratch("T")).add_(group["eta"])   # C^{-1} = T = |w| + eta
