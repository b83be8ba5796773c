r"""InfoSAM: the course's reconstruction of the noise-aware OP instance of preSAM.

The paper (Zhang, Li & Giannakis, 2025) states that infoSAM reweights the gradient that builds the
perturbation according to estimated gradient noise. The exact rule below, the signal-to-noise gain,
is **our reconstruction** (derived in chapter 06; see ``data/README`` and the course for sources).
"""
import torch

from .base import PreconditionedSAM, check_range

__all__ = ["InfoSAM"]


class InfoSAM(PreconditionedSAM):
    r"""InfoSAM: objective preconditioning by the per-coordinate signal-to-noise gain.

    With per-coordinate operations and running estimates of the gradient's mean and noise variance,

    .. math::

        m_0 = g_0,\quad v_0 = 0, \\
        m_t = \beta\, m_{t-1} + (1-\beta)\, g_t, \qquad
        v_t = \beta\, v_{t-1} + (1-\beta)\,(g_t - m_{t-1})^2, \\
        P_t = \max\!\Big(\text{floor},\ \frac{m_t^2}{m_t^2 + v_t}\Big)
            \quad (P_t = 1 \text{ where } m_t^2 + v_t = 0), \\
        \epsilon_t = \rho\,\frac{P_t\, g_t}{\|P_t\, g_t\|}.

    :math:`P = g^2/(g^2+\sigma^2)` maximizes the expected full-data ascent of a perturbation built
    from a noisy minibatch gradient (Cauchy--Schwarz; chapter 06). The first step is plain SAM.

    Args:
        beta: EMA factor :math:`\beta \in [0, 1)` of both running estimates.
        floor: lower bound on :math:`P` in :math:`[0, 1]`; ``floor > 0`` bounds the preconditioner's
            spectrum from below, as the convergence analysis needs. ``floor=1`` is SAM.
        precondition_mean: apply :math:`P_t` to :math:`m_t` instead of :math:`g_t` (InfoSAM combined
            with VaSSO-style variance suppression; an extension of ours, off by default).
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, beta: float = 0.9, floor: float = 0.0,
                 precondition_mean: bool = False, **base_kwargs):
        check_range("beta", beta, 0.0, 1.0, high_open=True)
        check_range("floor", floor, 0.0, 1.0)
        super().__init__(params, base_optimizer, rho=rho, variant_defaults=dict(
            beta=beta, floor=floor, precondition_mean=precondition_mean), **base_kwargs)

    def gradient_estimate(self, g, w, state, group):
        if "m" not in state:
            state["m"], state["v"] = g.clone(), torch.zeros_like(g)     # m_0 = g_0, v_0 = 0
        else:
            m, v, beta = state["m"], state["v"], group["beta"]
            noise = torch.sub(g, m, out=state.scratch("noise"))         # g_t - m_{t-1}
            v.lerp_(noise.square_(), 1.0 - beta)                         # v = beta v + (1 - beta) noise^2
            m.lerp_(g, 1.0 - beta)                                       # m = beta m + (1 - beta) g
        return state["m"] if group["precondition_mean"] else g

    def preconditioner(self, g, w, state, group):
        m, v = state["m"], state["v"]
        signal_plus_noise = torch.addcmul(v, m, m, out=state.scratch("m2+v"))   # m^2 + v
        signal_plus_noise.clamp_min_(torch.finfo(m.dtype).tiny)
        # P = m^2 / (m^2 + v), computed as 1 - v / (m^2 + v): exactly 1 (not 0/0) where m^2 + v = 0
        P = torch.addcdiv(self._one(m), v, signal_plus_noise, value=-1.0, out=state.scratch("P"))
        return P.clamp_min_(group["floor"]) if group["floor"] > 0 else P   # 0 <= P <= 1 already

    @staticmethod
    def _one(like):
        return torch.ones((), dtype=like.dtype, device=like.device)
