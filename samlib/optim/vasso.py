r"""VaSSO (Li & Giannakis, NeurIPS 2023): variance-suppressed gradient estimate."""
from .base import PreconditionedSAM, check_range

__all__ = ["VaSSO"]


class VaSSO(PreconditionedSAM):
    r"""Variance-suppressed sharpness-aware optimization.

    The perturbation follows an exponential average of minibatch gradients instead of :math:`g`:

    .. math::

        d_0 = g_0, \qquad d_t = (1-\theta)\,d_{t-1} + \theta\,g_t, \qquad
        \epsilon_t = \rho\,\frac{d_t}{\|d_t\|}.

    In preSAM terms VaSSO changes the gradient estimate, not the preconditioner.

    Args:
        theta: weight :math:`\theta \in [0, 1]` of the newest gradient; ``theta=1`` is SAM.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, theta: float = 0.9, **base_kwargs):
        check_range("theta", theta, 0.0, 1.0)
        super().__init__(params, base_optimizer, rho=rho, variant_defaults=dict(theta=theta), **base_kwargs)

    def gradient_estimate(self, g, w, state, group):
        if "d" not in state:
            state["d"] = g.clone()                    # d_0 = g_0
        else:
            state["d"].lerp_(g, group["theta"])       # d = (1 - theta) d + theta g
        return state["d"]
