"""One switch, three modes: ``SAMLIB_MODE=quick|standard|full``.

* ``quick``: what the tests run; seconds per notebook.
* ``standard`` (the default): a learner's laptop CPU; minutes per notebook.
* ``full``: a GPU; paper scale where it applies.
"""
import os

__all__ = ["MODES", "mode", "pick"]

MODES = ("quick", "standard", "full")


def mode() -> str:
    """The current mode from ``$SAMLIB_MODE`` (default ``standard``)."""
    value = os.environ.get("SAMLIB_MODE", "standard").strip().lower()
    if value not in MODES:
        raise ValueError(f"Invalid SAMLIB_MODE={value!r}. Set it to one of: quick, standard, full.")
    return value


def pick(quick, standard, full=None, *, current: str | None = None):
    """The value for the current mode (``full`` defaults to ``standard``)."""
    m = current or mode()
    return {"quick": quick, "standard": standard, "full": standard if full is None else full}[m]
