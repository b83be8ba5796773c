"""Projector-friendly figures (issue 15): no hard-coded small font sizes in samlib, one switch
(``samlib.plotting``) that makes every widget's text at least 18 px on a 1280x720 projector, legends
that never cover the data, colour-blind-safe colours."""
from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from samlib import plotting  # noqa: E402
from samlib import widgets as W  # noqa: E402

SAMLIB = pathlib.Path(plotting.__file__).resolve().parent
ROOT = SAMLIB.parent

#: the widgets of the widgets engineer (chapters 04, 07, 08, 09): held to every check below
NEW = ("convergence", "results07", "results08", "cost")
#: other owners' figure code that still hard-codes a small font size, or whose projector figure is
#: not yet legible, when this was written; each has an exact fix in /work/coord/notes/widgets.md
#: (Requests). Remove an entry when its fix is merged; the lists must end empty.
PENDING_FONTS = {"samlib/widgets.py:_alignment_plot", "samlib/experiments/report.py:plot_summary"}
PENDING_PROJECTOR = {"landscape", "presam", "alignment"}  # projected text 16.8 px: layout fix pending  # legible on main or not, not yet on their branches


# ---- no hard-coded small font sizes -------------------------------------------------------------------

SMALL_NAMES = {"xx-small", "x-small", "small", "smaller"}
FONT_KEYWORDS = {"fontsize", "labelsize", "titlesize", "title_fontsize"}
FONT_DICTS = {"prop", "fontdict", "title_fontproperties"}  # {"size": ...} inside these is a font size


def _is_fixed_size(node) -> bool:
    """A number (any hard-coded point size ignores the style) or a named size below the base size."""
    if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
        return False
    return isinstance(node.value, (int, float)) or node.value in SMALL_NAMES


def _is_rc_font_key(node) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.split(".")[0] in ("font", "legend", "xtick", "ytick", "axes", "figure")
            and node.value.endswith("size"))


def hard_coded_font_sizes(source: str, filename: str = "<source>") -> list[str]:
    """``file:function: what`` for every font size fixed in ``source``: a ``fontsize=``-like keyword with a
    number or a small named size, ``{"size": ...}`` in a ``prop=``/``fontdict=``, or an rcParams font size
    set to a number (``rcParams["legend.fontsize"] = 8``, ``rc_context({"font.size": 8})``)."""
    tree = ast.parse(source)
    found = []

    def visit(node, func):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name
        hits = []
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg in FONT_KEYWORDS and _is_fixed_size(kw.value):
                    hits.append(f"{kw.arg}={kw.value.value!r}")
                if kw.arg in FONT_DICTS and isinstance(kw.value, ast.Dict):
                    hits += [f"{kw.arg}={{'size': {v.value!r}}}" for k, v in zip(kw.value.keys, kw.value.values)
                             if isinstance(k, ast.Constant) and k.value in ("size", "fontsize") and _is_fixed_size(v)]
        if isinstance(node, ast.Dict):
            hits += [f"{{{k.value!r}: {v.value!r}}}" for k, v in zip(node.keys, node.values)
                     if _is_rc_font_key(k) and _is_fixed_size(v)]
        if isinstance(node, ast.Assign) and _is_fixed_size(node.value):
            hits += [f"[{t.slice.value!r}] = {node.value.value!r}" for t in node.targets
                     if isinstance(t, ast.Subscript) and _is_rc_font_key(t.slice)]
        found.extend(f"{filename}:{func}: {h}" for h in hits)
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(tree, "<module>")
    return found


def test_the_font_size_scanner_catches_what_it_must():
    planted = '''
def f(ax, plt):
    ax.legend(fontsize=8)
    ax.legend(prop={"size": 9})
    ax.set_title("t", fontsize="small")
    ax.tick_params(labelsize=7.5)
    plt.rcParams["legend.fontsize"] = 8
    with plt.rc_context({"font.size": 8}):
        pass
'''
    assert len(hard_coded_font_sizes(planted)) == 6
    fine = '''
def g(ax, plt):
    ax.legend(fontsize="large", loc="upper left", ncol=2)
    ax.set_title("t")
    x = torch.randint(0, 10, size=(3,))
    plt.rcParams["figure.figsize"] = (8, 4)
'''
    assert hard_coded_font_sizes(fine) == []


def test_no_hard_coded_font_sizes_in_samlib():
    """Figure code takes every size from the style (samlib/plotting.py is where the styles live)."""
    found = []
    for path in sorted(SAMLIB.rglob("*.py")):
        if path.name == "plotting.py":
            continue
        rel = path.relative_to(ROOT).as_posix()
        found += hard_coded_font_sizes(path.read_text(encoding="utf-8"), rel)
    unexpected = [f for f in found if f.rsplit(":", 1)[0] not in PENDING_FONTS]
    assert not unexpected, "hard-coded font sizes (use the style: samlib.plotting):\n" + "\n".join(unexpected)


# ---- the switch ------------------------------------------------------------------------------------------

def test_style_and_context_switch_and_restore():
    before = dict(matplotlib.rcParams)
    try:
        with plotting.projector():
            assert plotting.current() == "projector"
            assert matplotlib.rcParams["font.size"] == 14 and matplotlib.rcParams["lines.linewidth"] == 3.0
            assert plotting.figsize(0.5) == (8.0, 4.0)
        assert plotting.current() is None and dict(matplotlib.rcParams) == before
        plotting.style("projector")
        plotting.style("notebook")       # styles do not stack: notebook resets the projector's sizes
        assert matplotlib.rcParams["font.size"] == matplotlib.rcParamsDefault["font.size"]
        assert [c.lower() for c in matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]] == \
            [c.lower() for c in plotting.PALETTE]
        plotting.style("matplotlib")
        assert matplotlib.rcParams["axes.prop_cycle"] == matplotlib.rcParamsDefault["axes.prop_cycle"]
        with pytest.raises(ValueError, match="SAMLIB_FIGURES"):
            plotting.style("beamer")
    finally:
        matplotlib.rcParams.update(before)
        plotting._current[0] = None


def test_environment_switch():
    code = ("import matplotlib; matplotlib.use('Agg'); import samlib.widgets, samlib.plotting as p; "
            "print(p.current(), matplotlib.rcParams['font.size'])")
    env = {**os.environ, "SAMLIB_FIGURES": "projector", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, encoding="utf-8",
                         timeout=300, check=True)
    assert out.stdout.split() == ["projector", "14.0"]


# ---- what a projected widget looks like ---------------------------------------------------------------------

def _render(name, style):
    with plotting.projector(style):
        fig = W.render(name)
        info = plotting.text_sizes(fig)
    return fig, info


@pytest.mark.parametrize("name", list(W.WIDGETS))
def test_projector_text_is_at_least_18_px_at_1280x720(name):
    """Every text of every widget's figure, as JupyterLab shows it in Presentation mode at 1280x720
    (shrunk to 800 px if wider), is at least 18 px with the switch; without it the same text is 13.9 px."""
    if name in PENDING_PROJECTOR:
        pytest.skip(f"{name}: its owner's fix is pending (notes/widgets.md, Requests)")
    fig, info = _render(name, "projector")
    plt.close(fig)
    small = [(t["text"][:30], round(t["px"], 1)) for t in info["texts"] if t["px"] < plotting.PROJECTOR_MIN_TEXT_PX]
    assert not small, f"{name}: PNG {info['png']} shown at x{info['scale']:.2f}; text under 18 px: {small[:5]}"
    fig, plain = _render(name, "matplotlib")
    plt.close(fig)
    assert plain["min_px"] < plotting.PROJECTOR_MIN_TEXT_PX     # it is the switch that makes the difference


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("style", ["matplotlib", "projector"])
def test_legends_never_cover_the_axes(name, style):
    fig, _ = _render(name, style)
    renderer = fig.canvas.get_renderer()
    legends = [lg for lg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if lg is not None]
    assert legends
    for lg in legends:
        box = lg.get_window_extent(renderer)
        for ax in fig.axes:
            assert not _overlap(box, ax.get_window_extent(renderer)), f"{name}: a legend covers an axes"
    plt.close(fig)


#: colours that are not data colours (text, spines, white edges, grey references)
NEUTRAL = {"#000000", "#ffffff", "#7f7f7f", "#808080"}


@pytest.mark.parametrize("name", NEW)
def test_new_widgets_use_colour_blind_safe_colours(name):
    import matplotlib.collections as mcoll
    import matplotlib.lines as mlines
    import matplotlib.patches as mpatches
    allowed = {c.lower() for c in plotting.OKABE_ITO.values()} | NEUTRAL
    fig, _ = _render(name, "projector")
    used = set()
    for ax in fig.axes:
        for artist in ax.get_children():
            if isinstance(artist, mlines.Line2D) and artist.get_visible() and len(artist.get_xdata()):
                used.add(mcolors.to_hex(artist.get_color()))
            elif isinstance(artist, mpatches.Rectangle) and artist is not ax.patch:
                used.add(mcolors.to_hex(artist.get_facecolor(), keep_alpha=False))
            elif isinstance(artist, mcoll.PolyCollection):
                used |= {mcolors.to_hex(c, keep_alpha=False) for c in artist.get_facecolor()}
    plt.close(fig)
    assert used and used <= allowed, f"{name}: colours outside Okabe-Ito: {used - allowed}"
