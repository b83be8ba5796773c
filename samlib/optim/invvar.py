r"""Inverse-variance SAM: a comparison baseline for InfoSAM (not recommended for training)."""
import torch

from .infosam import InfoSAM

__all__ = ["InverseVarianceSAM"]


class InverseVarianceSAM(InfoSAM):
    r"""Objective preconditioning by the inverse of the estimated gradient-noise variance.

    With InfoSAM's running estimates :math:`m_t, v_t` (inherited, same update rule),

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
        if not damping > 0:
            raise ValueError(f"Invalid damping: {damping!r}. damping must be > 0.")
        super().__init__(params, base_optimizer, rho=rho, beta=beta, **base_kwargs)
        self.defaults["damping"] = damping
        for group in self.param_groups:
            group.setdefault("damping", damping)

    def preconditioner(self, g, w, state, group):
        v = state["v"]
        damped = v + group["damping"] * v.mean()          # v + delta * mean(v)
        return torch.where(damped > 0, damped.reciprocal(), torch.ones_like(v))   # v = 0 (first step): SAM
