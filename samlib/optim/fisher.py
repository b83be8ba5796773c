r"""Fisher-SAM (Kim et al., ICML 2022): a Fisher-shaped neighbourhood."""
import torch

from .base import PreconditionedSAM, check_range

__all__ = ["FisherSAM"]


class FisherSAM(PreconditionedSAM):
    r"""Fisher SAM with the diagonal empirical Fisher of the current minibatch.

    Constraint preconditioning with :math:`C = F^{1/2}`, :math:`F = \mathrm{diag}(1 + \eta g^2)`:

    .. math::

        \max_{\|F^{1/2}\epsilon\|\le\rho} g^\top\epsilon
        \quad\Longrightarrow\quad
        \epsilon = \rho\,\frac{F^{-1} g}{\sqrt{g^\top F^{-1} g}}

    (the paper's Algorithm 1, with its :math:`\gamma` as ``rho``).

    Example: ``FisherSAM(model.parameters(), torch.optim.SGD, rho=0.05, eta=1.0, lr=0.1)``.

    Args:
        eta: Fisher weight :math:`\eta \ge 0`; ``eta=0`` is SAM.
    """

    preconditioning = "CP"

    def __init__(self, params, base_optimizer, rho: float = 0.05, eta: float = 1.0, **kwargs):
        super().__init__(params, base_optimizer, rho, dict(eta=eta), **kwargs)

    def check_hyperparameters(self, group):
        check_range("eta", group["eta"], 0.0)

    def preconditioner(self, g, w, state, group):
        F = torch.addcmul(state.constant(1.0), g, g, value=group["eta"], out=state.scratch("F"))  # F = 1 + eta g^2
        return F.rsqrt_()                                                                           # C^{-1} = F^{-1/2}
