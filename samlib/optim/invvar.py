r"""Inverse-variance SAM: a comparison baseline for InfoSAM (not recommended for training)."""
import torch

from .base import PreconditionedSAM, check_range

__all__ = ["InverseVarianceSAM"]


class InverseVarianceSAM(PreconditionedSAM):
    r"""Objective preconditioning by the inverse of the estimated gradient-noise variance.

    With InfoSAM's running estimates :math:`m_t, v_t` (same update rule),

    .. math::

        P_t = \frac{1}{v_t + \delta\,\overline{v_t}}, \qquad \epsilon_t = \rho\,\frac{P_t g_t}{\|P_t g_t\|},

    where :math:`\overline{v_t}` is the mean of :math:`v_t` over the parameter group and
    :math:`\delta` (``damping``) keeps :math:`P` finite. This is the "naive" noise weighting that
    chapter 06 compares with InfoSAM's signal-to-noise gain; an early draft by the paper's group used
    :math:`P = 1/(m-g)^2` without damping. The first step (:math:`v_0 = 0`) is plain SAM.

    Args:
        beta: EMA factor in :math:`[0, 1)` of the running estimates.
        damping: :math:`\delta > 0`, relative to the mean variance.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, beta: float = 0.9, damping: float = 0.1,
                 **base_kwargs):
        check_range("beta", beta, 0.0, 1.0, high_open=True)
        if not damping > 0:
            raise ValueError(f"Invalid damping: {damping!r}. damping must be > 0.")
        super().__init__(params, base_optimizer, rho=rho, variant_defaults=dict(beta=beta, damping=damping),
                         **base_kwargs)

    def gradient_estimate(self, g, w, state, group):
        if "m" not in state:
            state["m"], state["v"] = g.clone(), torch.zeros_like(g)
        else:
            m, v, beta = state["m"], state["v"], group["beta"]
            v.lerp_(torch.sub(g, m, out=state.scratch("noise")).square_(), 1.0 - beta)
            m.lerp_(g, 1.0 - beta)
        return g

    def preconditioner(self, g, w, state, group):
        v = state["v"]
        damped = v + group["damping"] * v.mean()          # v + delta * mean(v)
        return torch.where(damped > 0, damped.reciprocal(), torch.ones_like(v))   # v = 0 (first step): SAM
