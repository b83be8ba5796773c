r"""Sparse SAM (Mi et al., NeurIPS 2022), in its objective-preconditioning form."""
import torch

from .base import PreconditionedSAM, check_range

__all__ = ["SSAM"]


class SSAM(PreconditionedSAM):
    r"""Sparse SAM with a Fisher-score mask: objective preconditioning with a binary :math:`P = M`.

    .. math::

        s_0 = g_0^2, \qquad s_t = \beta_F\, s_{t-1} + (1-\beta_F)\, g_t^2 \quad\text{(Fisher score)}, \\
        M = \mathbb{1}\big[s \text{ is among the largest } (1-\text{sparsity}) \text{ fraction}\big], \qquad
        \epsilon = \rho\,\frac{M\odot g}{\|M\odot g\|}.

    The mask is recomputed from the current score at the first step and then every
    ``mask_interval`` steps; the top-k is taken over all coordinates of a parameter group (with a
    single group on one device, over the whole model), with exactly ``round((1 - sparsity) * numel)`` kept.

    The original SSAM normalizes by :math:`\|g\|` rather than :math:`\|M\odot g\|` (so its
    :math:`\|\epsilon\| < \rho`); the form above is the preSAM (OP) view.

    Args:
        sparsity: fraction of coordinates left unperturbed, in :math:`[0, 1)`; ``0`` is SAM.
        fisher_beta: EMA factor :math:`\beta_F \in [0, 1)` of the Fisher score.
        mask_interval: steps between mask updates (a positive integer).
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, sparsity: float = 0.5,
                 fisher_beta: float = 0.9, mask_interval: int = 10, **base_kwargs):
        check_range("sparsity", sparsity, 0.0, 1.0, high_open=True)
        check_range("fisher_beta", fisher_beta, 0.0, 1.0, high_open=True)
        if not (isinstance(mask_interval, int) and mask_interval >= 1):
            raise ValueError(f"Invalid mask_interval: {mask_interval!r}. mask_interval must be an integer >= 1.")
        super().__init__(params, base_optimizer, rho=rho, variant_defaults=dict(
            sparsity=sparsity, fisher_beta=fisher_beta, mask_interval=mask_interval), **base_kwargs)

    def preconditioner(self, g, w, state, group):
        g2 = torch.mul(g, g, out=state.scratch("g2"))
        if "fisher" not in state:
            state["fisher"], state["mask"], state["step"] = g2.clone(), torch.empty_like(g), 0   # s_0 = g_0^2
        else:
            state["fisher"].lerp_(g2, 1.0 - group["fisher_beta"])   # s = beta_F s + (1 - beta_F) g^2
        if state["step"] % group["mask_interval"] == 0:
            keep = round((1.0 - group["sparsity"]) * g.numel())
            state["mask"].zero_()[state["fisher"].topk(keep, sorted=False).indices] = 1.0
        state["step"] += 1
        return state["mask"]                                         # P = M
