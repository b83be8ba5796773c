r"""Inverse-variance SAM: a comparison baseline for InfoSAM (not recommended for training)."""
import torch

from .base import PreconditionedSAM, check_range
from .infosam import InfoSAM

__all__ = ["InverseVarianceSAM"]


class InverseVarianceSAM(InfoSAM):
    r"""Objective preconditioning by the inverse of the estimated gradient-noise variance.

    With InfoSAM's running estimates :math:`m_t, v_t` (inherited, same update rule),

    .. math::

        P_t = \frac{1}{v_t + \delta\,\overline{v_t}}, \qquad \epsilon_t = \rho\,\frac{P_t g_t}{\|P_t g_t\|},

    where :math:`\overline{v_t}` is the mean of :math:`v_t` over the chunk (the parameters of one
    group, device and dtype that have a gradient) and :math:`\delta` (``damping``) keeps
    :math:`P` finite. This is the "naive" noise weighting that chapter 06 compares with
    InfoSAM's signal-to-noise gain. The first step (:math:`v_0 = 0`) is plain SAM.

    Provenance: an early draft of an inverse-variance SAM was briefly in a public repository of
    one of the paper's authors (the VaSSO code base; the file was later deleted and did not run).
    Its form was :math:`\epsilon = \rho\,(g \oslash b)/\|g \oslash b\|`, with :math:`b = (m-g)^2`,
    :math:`m` an EMA of :math:`g`, and no damping.

    Example: ``InverseVarianceSAM(model.parameters(), torch.optim.SGD, rho=0.05, damping=0.1, lr=0.1)``.

    Args:
        beta: EMA factor in :math:`[0, 1)` of the running estimates.
        damping: :math:`\delta > 0`, relative to the mean variance.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, beta: float = 0.9, damping: float = 0.1,
                 **kwargs):
        # InfoSAM's statistics with its default rule; the gain options do not apply here
        PreconditionedSAM.__init__(self, params, base_optimizer, rho, dict(
            beta=beta, damping=damping, precondition_mean=False, gain_from="current"), **kwargs)

    def check_hyperparameters(self, group):
        check_range("beta", group["beta"], 0.0, 1.0, high_open=True)
        if not group["damping"] > 0:
            raise ValueError(f"Invalid damping: {group['damping']!r}. damping must be > 0.")

    def preconditioner(self, g, w, state, group):
        v = state["v"]
        damped = torch.add(v, v.mean() * group["damping"], out=state.scratch("P"))   # v + delta mean(v)
        return damped.reciprocal_().nan_to_num_(nan=1.0, posinf=1.0)    # P = 1/damped; 1 where v = 0 (first step)
