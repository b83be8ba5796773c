r"""Friendly-SAM (Li et al., CVPR 2024): remove the full-batch component from the ascent."""
import torch

from .base import PreconditionedSAM, check_range

__all__ = ["FriendlySAM"]


class FriendlySAM(PreconditionedSAM):
    r"""Friendly SAM: perturb along the minibatch gradient minus an estimate of the full gradient.

    .. math::

        d_t = g_t - \sigma\, m_{t-1}, \qquad m_t = \lambda\, m_{t-1} + (1-\lambda)\, g_t, \qquad
        \epsilon_t = \rho\,\frac{d_t}{\|d_t\|},

    with :math:`d_0 = m_0 = g_0` at a parameter's first step, as in the official code
    (``nblt/F-SAM``, ``utils.py``). In preSAM terms this changes the gradient estimate, not the
    preconditioner.

    Example: ``FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.05, sigma=1.0, lmbda=0.9, lr=0.1)``.

    Args:
        sigma: how much of the running mean to remove, :math:`\sigma \ge 0`; ``sigma=0`` is SAM.
        lmbda: EMA factor :math:`\lambda \in [0, 1)` of the running mean :math:`m`.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, sigma: float = 1.0, lmbda: float = 0.9,
                 **kwargs):
        super().__init__(params, base_optimizer, rho, dict(sigma=sigma, lmbda=lmbda), **kwargs)

    def check_hyperparameters(self, group):
        check_range("sigma", group["sigma"], 0.0)
        check_range("lmbda", group["lmbda"], 0.0, 1.0, high_open=True)

    def init_state(self, g, w, state, group):
        state["m"] = g.clone()                                               # m_0 = g_0

    def gradient_estimate(self, g, w, state, group):
        m = state["m"]
        d = torch.add(g, m, alpha=-group["sigma"], out=state.scratch("d"))   # d = g - sigma m_{t-1}
        if state.fresh is not None:
            torch.where(state.fresh, g, d, out=d)                            # d_0 = g_0
        m.lerp_(g, 1.0 - group["lmbda"])                                     # m = lmbda m + (1 - lmbda) g
        return d
