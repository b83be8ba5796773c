r"""VaSSO (Li & Giannakis, NeurIPS 2023): variance-suppressed gradient estimate."""
from .base import PreconditionedSAM, check_range

__all__ = ["VaSSO"]


class VaSSO(PreconditionedSAM):
    r"""Variance-suppressed sharpness-aware optimization.

    The perturbation follows an exponential average of minibatch gradients instead of :math:`g`:

    .. math::

        d_0 = g_0, \qquad d_t = (1-\theta)\,d_{t-1} + \theta\,g_t, \qquad
        \epsilon_t = \rho\,\frac{d_t}{\|d_t\|}.

    In preSAM terms VaSSO changes the gradient estimate, not the preconditioner. As in the
    official code (``BingcongLi/VaSSO``, ``solver/vasso.py``), each parameter's average starts at
    its first gradient (a parameter used later starts later; the others keep theirs).

    Example: ``VaSSO(model.parameters(), torch.optim.SGD, rho=0.1, theta=0.4, lr=0.1)``.

    Args:
        theta: weight :math:`\theta \in [0, 1]` of the newest gradient; ``theta=1`` is SAM.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, theta: float = 0.9, **kwargs):
        super().__init__(params, base_optimizer, rho, dict(theta=theta), **kwargs)

    def check_hyperparameters(self, group):
        check_range("theta", group["theta"], 0.0, 1.0)

    def init_state(self, g, w, state, group):
        state["d"] = g.clone()                         # d_0 = g_0

    def gradient_estimate(self, g, w, state, group):
        return state["d"].lerp_(g, group["theta"])     # d = (1 - theta) d + theta g
