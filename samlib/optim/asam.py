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

    **Which parameters are scaled.** samlib scales every parameter, biases and BatchNorm
    parameters included **[ours: simplification]**. The official ASAM code
    (``SamsungLabs/ASAM``, ``asam.py``) scales only parameters whose name contains ``"weight"``
    and leaves the others (biases) at :math:`T = 1`; davda54/sam's ``adaptive=True`` uses
    :math:`T = |w|` (``eta=0``). To reproduce the official code, put the biases in a group with
    ``"adaptive": False`` (:math:`T = 1` for that group)::

        decay = [p for n, p in model.named_parameters() if "weight" in n]
        other = [p for n, p in model.named_parameters() if "weight" not in n]
        opt = ASAM([{"params": decay}, {"params": other, "adaptive": False}], torch.optim.SGD, rho=0.5, lr=0.1)

    Args:
        rho: radius of the rescaled neighbourhood (ASAM's paper uses 0.5 on CIFAR-10, 1.0 on CIFAR-100).
        eta: offset :math:`\eta \ge 0` that keeps :math:`T` positive where :math:`w = 0`.
    """

    preconditioning = "CP"
    uses_weights = True

    def __init__(self, params, base_optimizer, rho: float = 0.5, eta: float = 0.01, **kwargs):
        super().__init__(params, base_optimizer, rho, dict(eta=eta, adaptive=True), **kwargs)

    def check_hyperparameters(self, group):
        check_range("eta", group["eta"], 0.0)

    def preconditioner(self, g, w, state, group):
        if not group["adaptive"]:
            return None                                                    # T = 1 (official: biases)
        return torch.abs(w, out=state.scratch("T")).add_(group["eta"])     # C^{-1} = T = |w| + eta
