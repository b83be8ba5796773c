"""The course's figure styles: one switch makes every figure readable on a projector.

* ``style("notebook")`` (what the course uses on a laptop screen): matplotlib's sizes, a
  colour-blind-safe colour cycle (Okabe & Ito), thicker lines.
* ``style("projector")``: the same figures for a 1280x720 projector in JupyterLab's Presentation
  mode: every text is at least 18 px high on screen (measured, see :func:`text_sizes`), figures
  fit the output area without being shrunk, lines and markers are thicker.
* ``style("matplotlib")``: matplotlib's own defaults (undo the above).

The switch, three ways (each affects every figure drawn afterwards, the widgets' included)::

    from samlib import plotting
    plotting.style("projector")            # from now on
    with plotting.projector():             # only inside the block
        ...
    SAMLIB_FIGURES=projector jupyter lab   # applied when samlib.plotting (or samlib.widgets) is imported

Figure code in samlib never hard-codes a font size (``tests/test_plotting.py`` checks it): sizes
come from the style, so the switch reaches every text. Colours come from :data:`OKABE_ITO`.
"""
from __future__ import annotations

import contextlib
import os

__all__ = ["OKABE_ITO", "PALETTE", "STYLES", "PROJECTOR_WIDTH_PX", "PROJECTOR_MIN_TEXT_PX", "style", "projector",
           "current", "figsize", "text_sizes", "apply_env"]

#: Okabe & Ito (2008), "Color universal design": distinguishable with the common colour-vision
#: deficiencies (deuteranopia, protanopia, tritanopia). No red-green pair.
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
             "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "gray": "#7F7F7F"}
#: The colour cycle (yellow last: it is faint on white).
PALETTE = [OKABE_ITO[k] for k in ("blue", "orange", "green", "vermillion", "purple", "sky", "black", "yellow")]

#: The width in CSS pixels that JupyterLab 4.6 gives an output image at a 1280x720 viewport in
#: Presentation mode with the file browser open (measured with Chromium: 802 px; 1054 px with the
#: left area closed; 848 px outside Presentation mode). A wider image is shrunk to fit, and its text with it.
PROJECTOR_WIDTH_PX = 800
#: The smallest text the projector style allows, in screen pixels at 1280x720 (JupyterLab's
#: Presentation mode sets body text to 17 px).
PROJECTOR_MIN_TEXT_PX = 18

_COMMON = {
    "axes.prop_cycle": None,  # filled below (needs matplotlib's cycler)
    "lines.linewidth": 2.0,
    "image.cmap": "viridis",  # perceptually uniform and colour-blind safe
    "legend.framealpha": 0.9,
}

#: name -> (rcParams, widget figure width in inches)
STYLES = {
    "matplotlib": ({}, 7.0),
    "notebook": ({**_COMMON}, 7.0),
    "projector": ({**_COMMON,
                   # 100 dpi, 8 in wide: an 800 px image, shown unshrunk in Presentation mode
                   "figure.dpi": 100, "savefig.dpi": "figure", "figure.figsize": (8.0, 4.8),
                   # 14 pt at 100 dpi is 19.4 px; the title 16 pt
                   "font.size": 14, "axes.titlesize": 16, "axes.labelsize": 14, "xtick.labelsize": 14,
                   "ytick.labelsize": 14, "legend.fontsize": 14, "legend.title_fontsize": 14,
                   "figure.titlesize": 16, "figure.labelsize": 14,
                   "lines.linewidth": 3.0, "lines.markersize": 9, "axes.linewidth": 1.5, "patch.linewidth": 1.5,
                   "xtick.major.width": 1.5, "ytick.major.width": 1.5, "xtick.major.size": 6, "ytick.major.size": 6,
                   "grid.linewidth": 1.0}, 8.0),
}

_current: list = [None]   # the style chosen with style() or projector(); None: none chosen


def _rc(name: str) -> dict:
    if name not in STYLES:
        raise ValueError(f"Unknown figure style {name!r}. Choose one of: {', '.join(STYLES)} "
                         "(in the environment: SAMLIB_FIGURES=notebook|projector|matplotlib).")
    import matplotlib as mpl
    from cycler import cycler
    rc = dict(STYLES[name][0])
    if "axes.prop_cycle" in rc:
        rc["axes.prop_cycle"] = cycler(color=PALETTE)
    if name != "matplotlib":
        # every style starts from matplotlib's defaults for the keys any style sets, so styles do not stack
        base = {k: mpl.rcParamsDefault[k] for s in STYLES.values() for k in s[0]}
        rc = {**base, **rc}
    else:
        rc = {k: mpl.rcParamsDefault[k] for s in STYLES.values() for k in s[0]}
    return rc


def style(name: str = "notebook") -> None:
    """Use figure style ``name`` (``"notebook"``, ``"projector"`` or ``"matplotlib"``) from now on."""
    import matplotlib as mpl
    mpl.rcParams.update(_rc(name))
    _current[0] = name


@contextlib.contextmanager
def projector(name: str = "projector"):
    """``with plotting.projector():`` figures drawn inside the block use the projector style."""
    import matplotlib as mpl
    previous = _current[0]
    with mpl.rc_context(_rc(name)):
        _current[0] = name
        try:
            yield
        finally:
            _current[0] = previous


def current() -> str | None:
    """The samlib style chosen with :func:`style` or :func:`projector`; ``None`` if none was chosen
    (figures then use whatever matplotlib's rcParams are)."""
    return _current[0]


def figsize(aspect: float = 0.6, width: float = 1.0) -> tuple[float, float]:
    """A figure size for the current style: ``width`` times the style's figure width (7 in; 8 in for
    the projector), height ``aspect`` times that."""
    w = STYLES[_current[0] or "matplotlib"][1] * width
    return (w, w * aspect)


def apply_env() -> str | None:
    """Apply ``$SAMLIB_FIGURES`` (notebook, projector or matplotlib) if it is set; return the style used."""
    name = os.environ.get("SAMLIB_FIGURES", "").strip().lower()
    if not name:
        return None
    style(name)
    return name


def text_sizes(fig, display_width: float | None = PROJECTOR_WIDTH_PX) -> dict:
    """How big ``fig``'s texts are on screen once saved as JupyterLab shows it (``bbox_inches="tight"``).

    Returns the PNG's size in pixels, the factor by which a browser shrinks it to fit
    ``display_width`` CSS pixels (1 if it fits; ``None``: no shrinking), and every visible non-empty
    text (titles, labels, tick labels, legend entries, annotations) with its font size in screen
    pixels: points x dpi / 72 x that factor. The font size is the em size; a capital letter is
    about 0.7 of it.
    """
    import io

    import matplotlib.text as mtext
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    width, height = Image.open(io.BytesIO(buf.getvalue())).size
    scale = 1.0 if display_width is None else min(1.0, display_width / width)
    texts = []
    for t in fig.findobj(mtext.Text):
        if not t.get_visible() or not t.get_text().strip():
            continue
        if t.axes is not None and not t.axes.get_visible():
            continue
        px = t.get_fontsize() * fig.dpi / 72.0 * scale
        texts.append({"text": t.get_text(), "px": px})
    return {"png": (width, height), "scale": scale, "texts": texts,
            "min_px": min((t["px"] for t in texts), default=float("nan"))}


apply_env()
