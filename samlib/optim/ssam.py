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

    The mask is recomputed from the current score at the first step, then every
    ``mask_interval`` steps, and at a step where parameters without statistics joined; the top-k
    (exactly ``round((1 - sparsity) * numel)`` kept) runs over one chunk: the parameters of one
    group, device and dtype that have a gradient (with one group on one device, the whole model).

    Two simplifications **[ours]** of SSAM-F as the official code implements it
    (``Mi-Peng/Sparse-Sharpness-Aware-Minimization``, ``solver/sam.py``):

    * the Fisher score is an EMA of squared *minibatch-mean* gradients, refreshed every
      ``mask_interval`` steps; the official code sums squared *per-example* gradients over
      ``num_samples`` examples and refreshes every ``update_freq`` epochs (roughly
      :math:`g^2 + \sigma^2/B` here against :math:`g^2 + \sigma^2` there);
    * the official code normalizes by :math:`\|g\|` rather than :math:`\|M\odot g\|` (so its
      :math:`\|\epsilon\| < \rho`, same direction); the form above is the preSAM (OP) view. It
      keeps ``int`` rather than ``round`` of :math:`(1-\text{sparsity})\,n` coordinates.

    Example: ``SSAM(model.parameters(), torch.optim.SGD, rho=0.1, sparsity=0.5, lr=0.1)``.

    Args:
        sparsity: fraction of coordinates left unperturbed, in :math:`[0, 1)`; ``0`` is SAM.
        fisher_beta: EMA factor :math:`\beta_F \in [0, 1)` of the Fisher score.
        mask_interval: steps between mask updates (a positive integer).
    """

    preconditioning = "OP"

    def __init__(self, params, base_optimizer, rho: float = 0.05, sparsity: float = 0.5,
                 fisher_beta: float = 0.9, mask_interval: int = 10, **kwargs):
        super().__init__(params, base_optimizer, rho, dict(
            sparsity=sparsity, fisher_beta=fisher_beta, mask_interval=mask_interval), **kwargs)

    def check_hyperparameters(self, group):
        check_range("sparsity", group["sparsity"], 0.0, 1.0, high_open=True)
        check_range("fisher_beta", group["fisher_beta"], 0.0, 1.0, high_open=True)
        k = group["mask_interval"]
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"Invalid mask_interval: {k!r}. mask_interval must be an integer >= 1.")

    def init_state(self, g, w, state, group):
        state["fisher"], state["mask"], state["step"] = g * g, torch.zeros_like(g, dtype=torch.bool), 0   # s_0 = g_0^2

    def preconditioner(self, g, w, state, group):
        g2 = torch.mul(g, g, out=state.scratch("g2"))
        state["fisher"].lerp_(g2, 1.0 - group["fisher_beta"])        # s = beta_F s + (1 - beta_F) g^2
        if state["step"] % group["mask_interval"] == 0 or state.fresh is not None:
            keep = round((1.0 - group["sparsity"]) * g.numel())
            state["mask"].zero_().index_fill_(0, state["fisher"].topk(keep, sorted=False).indices, True)
        state["step"] += 1
        return state["mask"]                                         # P = M
