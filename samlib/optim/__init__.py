"""samlib.optim: the preconditioned-SAM (preSAM) optimizer family.

Every optimizer is a short subclass of :class:`PreconditionedSAM`, which computes
``eps = rho * d / ||n||`` from its hooks: the running statistics' initial values (``init_state``),
a gradient estimate and a diagonal preconditioner.
"""
from .asam import ASAM
from .base import PreconditionedSAM
from .bn import frozen_bn_stats
from .fisher import FisherSAM
from .friendly import FriendlySAM
from .infosam import InfoSAM
from .invvar import InverseVarianceSAM
from .sam import SAM
from .ssam import SSAM
from .vasso import VaSSO

#: The variants by name, in course order (used by the experiment runner and the benchmark).
#: InverseVarianceSAM is a comparison baseline for chapter 06 and is deliberately not listed.
OPTIMIZERS = {cls.__name__: cls for cls in (SAM, ASAM, FisherSAM, SSAM, VaSSO, FriendlySAM, InfoSAM)}

__all__ = ["PreconditionedSAM", "SAM", "ASAM", "FisherSAM", "SSAM", "VaSSO", "FriendlySAM", "InfoSAM",
           "InverseVarianceSAM", "frozen_bn_stats", "OPTIMIZERS"]
