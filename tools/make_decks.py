"""Build the lecture decks: one slide notebook per lecture of the plans in ``chapters/README.md``.

    python tools/make_decks.py                 # the two-lecture module, executed (SAMLIB_MODE, default standard)
    python tools/make_decks.py --unit          # and one deck per chapter (the six-to-eight-lecture unit)
    python tools/make_decks.py --no-execute    # build only; run the cells in JupyterLab before presenting

The decks go to ``build/lectures/`` (``--out``): ``lecture1.ipynb``, ``lecture2.ipynb``,
``unit-01.ipynb`` ... and ``rise.css``. Present one offline with JupyterLab and ``jupyterlab-rise``
(in the dev extra): ``jupyter lab build/lectures/lecture1.ipynb``, run all cells (the widgets need
the live kernel), then View > Open as Reveal Slideshow (command ``RISE:slideshow``: a new browser
tab; F11 for full screen). Alt+R (``RISE:preview``) shows the same slides in a JupyterLab panel.
RISE bundles reveal.js and the ``white`` theme's font, and maths is rendered by JupyterLab's own
MathJax, so nothing is fetched from the internet (checked in Chromium with every non-local request
blocked: none was attempted). Slides are laid out at 1280x720 and scaled to the screen.

Where a deck's cells come from. A chapter cell belongs to lecture N of the two-lecture module when
it carries the tag ``lecture-N``; its ``metadata.slideshow.slide_type`` (slide, subslide,
fragment, ``-``, skip, notes) is the one RISE uses, in the chapter and in the deck. The builder adds:

* the **setup cells the selected code depends on**: for every name a selected cell reads, the last
  earlier cell of the chapter that assigns it is included (recursively), as a hidden ``skip``
  slide, so a deck never stops with a ``NameError``; the chapter's parameters cell is always in;
* **hidden code** where the output is what matters: code cells tagged ``deck-hide-input``, and every
  code cell with a line wider than :data:`MAX_CODE_WIDTH` characters (it would be cut off when
  projected), have their input collapsed (``metadata.jupyter.source_hidden``) and ``rise.css``
  hides the placeholder;
* a title slide, speaker notes with the minute plan, the bridge figure of lecture 2, and a homework
  slide, all written here from :data:`MODULE`;
* a first hidden cell that switches figures to the projector style of ``samlib.plotting``.

The six-to-eight-lecture unit uses whole chapters (``--unit``): every cell, in order; a cell's own
slide type if it has one, otherwise ``## `` headings start a slide and ``### `` headings or
"Answer to the prediction" paragraphs a subslide.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import copy
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
OUT = ROOT / "build" / "lectures"
BRIDGE_DATA = ROOT / "tools" / "lectures" / "bridge_alignment.json"

#: The widest code line a slide shows: at 1280x720 in RISE a code cell shows about this many
#: characters of JupyterLab's monospace font before the right edge cuts it off (measured; see
#: ``rise.css`` and the notes of issue 15). Wider cells are shown by their output only.
MAX_CODE_WIDTH = 80
SLIDE_TYPES = ("slide", "subslide", "fragment", "-", "skip", "notes")
HIDE_INPUT_TAG = "deck-hide-input"

#: RISE settings stored in each deck (``metadata.rise``). Slides are laid out at 1280x720 CSS px and
#: reveal.js scales the whole slide (text, maths and figures alike) to the projector: x1.5 at
#: 1920x1080, so every text keeps its share of the slide height (``margin`` 0: no shrinking at
#: 1280x720; a smaller window, such as the Alt+R preview panel, shrinks the slide instead of cutting it). Slides scroll when a long cell does not fit; slide numbers; no transition (projectors
#: smear them). The theme is ``white``: its font (Source Sans Pro) is bundled with RISE, while
#: ``simple`` (RISE's default), ``sky``, ``beige``, ``night``, ``moon``, ``solarized``, ``blood`` and
#: ``league`` fetch Google Fonts (seen as blocked requests when presented offline).
SLIDE_SIZE = (1280, 720)
OFFLINE_THEMES = ("white", "black", "serif", "dracula")
RISE = {"scroll": True, "width": SLIDE_SIZE[0], "height": SLIDE_SIZE[1], "margin": 0, "minScale": 0.2,
        "theme": "white", "transition": "none", "slideNumber": "c/t", "start_slideshow_at": "beginning",
        "auto_select": "none", "enable_chalkboard": True, "controls": True, "progress": True, "center": False}

RISE_CSS = """\
/* Lecture decks (tools/make_decks.py): projector-friendly RISE, 1280x720 and up. */
/* The slide keeps its 1280x720 layout and reveal.js scales it to the screen (RISE's own CSS forces a
   full-width slide, which reveal.js then scales off-centre: at 1920x1080 the left third was cut off). */
.rise-enabled .reveal div.slides { width: SLIDE_Wpx !important; height: SLIDE_Hpx !important; }
/* RISE makes a slide taller than the screen scroll by giving it 95vh, in screen px; in the scaled
   slide that is too tall (1026 px of 720 at 1920x1080: the bottom was cut off, not scrollable). */
.rise-enabled .reveal div.slides section[style*="overflow-y: scroll"] { max-height: SLIDE_SCROLLpx !important; }
/* Code cells whose input the deck hides: no placeholder bar, only the output. */
.reveal .jp-Cell .jp-InputPlaceholder,
.reveal .jp-Cell.jp-mod-noInput .jp-InputArea { display: none !important; }
/* No prompt column ("[3]:"): it costs width on a projector. */
.reveal .jp-InputPrompt, .reveal .jp-OutputPrompt { display: none !important; }
/* Sizes in px of the 1280x720 slide (reveal.js scales them to the screen): body text and maths
   22 px = 3.1 % of the slide height, readable from the back of the room; printed results 19 px,
   wrapped instead of cut at the right edge. */
.reveal .jp-RenderedMarkdown { font-size: 22px; line-height: 1.4; }
.reveal .jp-RenderedMarkdown h2 { font-size: 34px; }
.reveal .jp-RenderedMarkdown h3 { font-size: 28px; }
.reveal .jp-OutputArea-output pre { font-size: 19px; line-height: 1.3; white-space: pre-wrap; }
.reveal .jp-CodeMirrorEditor .cm-content { font-size: 19px; }
/* Headings as written (the white theme capitalizes them, which garbles notation such as L or rho). */
.reveal h1, .reveal h2, .reveal h3 { text-transform: none !important; }
/* Figures use the full slide width they were drawn for, never more. */
.reveal .jp-RenderedImage img { max-width: 100%; height: auto; }
""".replace("SLIDE_W", str(SLIDE_SIZE[0])).replace("SLIDE_H", str(SLIDE_SIZE[1])).replace(
    "SLIDE_SCROLL", str(round(0.95 * SLIDE_SIZE[1])))

#: The resolution of the chapters' figures in a deck. The projector style draws 14 pt text at
#: 100 dpi (19.4 px, 2.7 % of a 720-px slide); at 115 dpi it is 22.4 px (3.1 %), the size of the body
#: text, and an 8-inch figure is 920 px wide, which fits the 1280-px slide unshrunk. (The widgets
#: draw their figures in the style's own 100 dpi.)
DECK_DPI = 115

PROJECTOR_CELL = f'''\
# Deck setup (hidden): every figure from here on in the projector style of samlib.plotting
# (14 pt text, 8-inch-wide figures, thicker lines, colour-blind-safe colours), at {DECK_DPI} dpi.
import matplotlib
from samlib import plotting
plotting.style("projector")
matplotlib.rcParams["figure.dpi"] = {DECK_DPI}
'''


@dataclass
class Lecture:
    """One deck of the two-lecture module."""
    number: int
    title: str
    chapters: list[str]            # chapter notebooks (stems) whose cells tagged lecture-N go in, in this order
    sources: str                   # markdown: which chapter sections the deck shows
    plan: list[tuple[str, str]]    # (minutes, what) for the speaker notes
    homework: list[str]            # markdown items
    after: str                     # markdown: what students read or run after the lecture
    #: chapter stem -> function(deck cells of that chapter) -> deck cells: adds generated slides
    #: (the bridge figure, a placeholder); it runs also when the chapter has no tagged cell (empty list)
    extra: dict = field(default_factory=dict)
    #: chapters that may have no cell tagged for the lecture yet (their ``extra`` then stands in)
    optional: tuple = ()

    @property
    def tag(self) -> str:
        return f"lecture-{self.number}"

    @property
    def name(self) -> str:
        return f"lecture{self.number}"


def _bridge_cells() -> list[dict]:
    """Lecture 2's bridge (chapter 05): the precomputed alignment against batch size and label noise."""
    record = json.loads(BRIDGE_DATA.read_text(encoding="utf-8"))
    rows = [(r["noise"], r["batch"], r["cos"], r["se"]) for r in record["rows"]]
    s = record["settings"]
    text = (
        "## Bridge: a minibatch adversary points elsewhere (chapter 05)\n\n"
        "SAM perturbs along a **minibatch** gradient $g_B = g + \\xi$. How well does "
        "$\\epsilon_{\\text{batch}} = \\rho\\,g_B/\\|g_B\\|$ align with the full-data adversary "
        "$\\epsilon_{\\text{full}} = \\rho\\,g/\\|g\\|$? Chapter 05's network, at fixed weights **[ours]**:")
    reading = (
        "**Reading it.** The alignment is far from 1 at common batch sizes and grows with $B$; label noise lowers "
        "it clearly only at large batches (at $B \\le 64$ the three rates lie within one or two standard errors). "
        "The paper's abstract names an \"adversarial model degradation\" issue that infoSAM addresses **[paper]**; "
        "reading it as this misalignment is the course's interpretation **[ours]**. Chapter 06 asks which "
        "preconditioner makes the best adversary under this noise.\n\n"
        f"<small>Precomputed, not run live: `{record['command']}` (small CNN, {s['n_train']:,} Fashion-MNIST "
        f"images, $\\rho = {s['rho']}$, eval-mode BatchNorm, {s['n_batches']} minibatches per point, mean ± standard "
        "error).</small>")
    code = (
        "# Precomputed by tools/lectures/bridge_alignment.py (its command is on the slide).\n"
        "import matplotlib.pyplot as plt\n\n"
        f"ROWS = {rows!r}  # (label noise, batch size, cos, standard error)\n"
        "fig, ax = plt.subplots(figsize=(8, 4.2))\n"
        "for rate, marker in zip(sorted({r[0] for r in ROWS}), 'os^'):\n"
        "    pts = [r for r in ROWS if r[0] == rate]\n"
        "    ax.errorbar([r[1] for r in pts], [r[2] for r in pts], yerr=[r[3] for r in pts],\n"
        "                marker=marker, capsize=3, label=f'label noise {rate:.0%}')\n"
        "ax.set_xscale('log', base=2)\n"
        "ax.set(xlabel='batch size $B$', ylabel=r'$\\cos(\\epsilon_{batch}, \\epsilon_{full})$', ylim=(0, 1),\n"
        "       title=\"SAM's minibatch adversary vs the full-data one\")\n"
        "ax.legend(loc='upper left')  # the data sit low on the left, high on the right\n"
        "ax.grid(alpha=0.3)\n"
        "plt.show()\n")
    return [_md(text, "slide"), _code(code, "-", hide=True), _md(reading, "fragment")]


def _after_first_slide(cells: list, new: list) -> list:
    """``new`` inserted after the first shown slide of ``cells`` (and its fragments), else appended."""
    shown = [k for k, c in enumerate(cells) if slide_type(c) == "slide"]
    if not shown:
        return cells + new
    k = shown[0] + 1
    while k < len(cells) and slide_type(cells[k]) in ("fragment", "-", "notes"):
        k += 1
    return cells[:k] + new + cells[k:]


def _bridge(cells: list) -> list:
    """Chapter 05 in lecture 2: the precomputed bridge figure right after the chapter's first slide
    (its question, when chapter 05 carries lecture-2 tags), or alone."""
    return _after_first_slide(cells, _bridge_cells())


def _chapter06(cells: list) -> list:
    """Chapter 06 in lecture 2: its tagged cells, or a placeholder slide until it has some."""
    return cells or _chapter06_pending()


def _chapter06_pending() -> list[dict]:
    return [_md(
        "## Noise-aware objective preconditioning (chapter 06)\n\n"
        "*Deck to be completed:* chapter 06 is being rewritten, so this deck does not yet include its cells. "
        "Present its derivation from the chapter itself: the section "
        "\"Which preconditioner makes the best adversary?\" and its three checks, then \"From the oracle gain "
        "to an estimator\". The course's gain $P = g^2/(g^2+\\sigma^2)$ is its own derivation **[ours]**; "
        "inverse-variance weighting is another reading of the abstract, measured side by side in chapter 06.",
        "slide")]


MODULE = [
    Lecture(
        number=1, title="Flatness and SAM", chapters=["01_flat_minima", "02_sam_from_scratch"],
        sources=("Chapter 01: *Three ways to measure sharpness*, *A landscape with a sharp and a flat minimum*, "
                 "*Flatness is not invariant to reparametrization*. Chapter 02: *The objective*, *From min–max to a "
                 "two-step update* (Danskin, one SAM step, SAM from scratch = `samlib.optim.SAM`), *SAM on a 2-D "
                 "landscape* (saddle attraction, the $\\rho$ table, a constant $\\rho$'s fixed point, GD's 2-cycle)."),
        plan=[("0–20", "three sharpness measures; $S_\\rho \\approx \\tfrac12\\rho^2\\lambda_{\\max}$; predict-first as a "
                        "clicker question; the closed-form check"),
              ("20–27", "two wells: the sharp minimum is lower, the flat one more robust"),
              ("27–35", "reparametrization (Dinh et al.): same function, Hessian blocks $\\times\\alpha^{\\pm2}$"),
              ("35–50", "min–max objective; dual norm by Hölder (board); brute-force check; clicker: $p=\\infty$"),
              ("50–62", "Danskin vs the surrogate's chain rule; one SAM step; from scratch = samlib"),
              ("62–77", "2-D toy live (widget): GD → sharp minimum, SAM caught by the saddle; the $\\rho$ table; "
                        "constant-$\\rho$ fixed point; GD's 2-cycle"),
              ("77–80", "homework")],
        homework=["Chapter 01, exercise 1 *(derivation)*: $S_\\rho = \\tfrac12\\rho^2\\lambda_{\\max}$ exactly at the minimum "
                  "of a quadratic, checked with `G.sam_sharpness`.",
                  "Chapter 02, exercise 1 *(derivation)*: $\\epsilon^*$ for $p = 1$, and why it is not unique when "
                  "coordinates of $|g|$ tie.",
                  "Chapter 02, exercise 3 *(derivation + coding)*: the surrogate's exact gradient against SAM's "
                  "$\\nabla L(w+\\epsilon^*)$ on a grid; where and why they differ by more than 50%.",
                  "Optional, chapter 02, exercise 6 *(proof)*: SAM at a maximum, the mechanism behind the saddle "
                  "on the slides."],
        after=("Read chapter 01's sections *Noise prefers flat minima* and the PAC-Bayes bound, and chapter 02's "
               "*Using samlib*, *What SAM's update does* and *SAM against USAM*. Run chapters 01 and 02 in "
               "standard mode (about a minute of CPU time)."),
    ),
    Lecture(
        number=2, title="Preconditioning and noise",
        chapters=["03_presam", "05_gradient_noise", "06_infosam"], optional=("05_gradient_noise", "06_infosam"),
        sources=("Chapter 03: *Constraint preconditioning* and *Objective preconditioning* (KKT, brute-force check), "
                 "*Seeing the two families* (widget), *CP and OP differ only in the radius*, *The variants as "
                 "instances* with the ASAM, Fisher-SAM and InfoSAM checks, *One base class*. Chapter 05's alignment "
                 "figure (precomputed). Chapter 06: the noise-aware gain."),
        plan=[("0–5", "recap; \"which direction should the adversary take?\""),
              ("5–22", "CP by Lagrangian/KKT, OP; boxed forms; brute-force check; predict-first as a clicker"),
              ("22–30", "the presam widget live; answer: CP tilts twice"),
              ("30–40", "proposition: CP with $C$ = OP with $P=C^{-2}$ up to the radius; the check"),
              ("40–50", "the variants table; official ASAM and Fisher-SAM are CP, InfoSAM is OP; one base class"),
              ("50–57", "bridge: minibatch adversaries are misaligned (chapter 05, precomputed)"),
              ("57–77", "chapter 06: the noise-aware gain by Cauchy–Schwarz **[ours]**, its estimator"),
              ("77–80", "homework; teaser: does a better adversary generalize? (chapter 07)")],
        homework=["Chapter 03, exercise 2 *(derivation)*: scale invariance of OP and CP, and what it means for "
                  "InfoSAM's `floor`.",
                  "Chapter 03, exercise 4 *(coding)*: `RootSAM` ($P = |g|^{1/2}$) as a subclass of "
                  "`PreconditionedSAM`, checked against `presam_eps` and $\\ell_{5/3}$-SAM.",
                  "Optional, chapter 03, exercise 6 *(proof)*: $\\ell_p$-SAM is OP with $P = |g|^{q-2}$.",
                  "Chapter 06, exercise 2 *(derivation)*: $J$ for $P = 1/\\sigma^2$ and for the gain as "
                  "$\\delta \\to 0$ on $g = (1, \\delta)$; why inverse variance fails."],
        after=("Read chapter 04's *What the theorem does not show* and chapter 05's first two sections. "
               "Run chapter 06 in standard mode for its real-data table (several minutes)."),
        extra={"05_gradient_noise": _bridge, "06_infosam": _chapter06},
    ),
]


# ---------------------------------------------------------------------------------------------------
# cells

def _md(text: str, slide_type: str) -> dict:
    cell = nbformat.v4.new_markdown_cell(text)
    cell.metadata["slideshow"] = {"slide_type": slide_type}
    return cell


def _code(text: str, slide_type: str, hide: bool = False) -> dict:
    cell = nbformat.v4.new_code_cell(text)
    cell.metadata["slideshow"] = {"slide_type": slide_type}
    if hide:
        cell.metadata["jupyter"] = {"source_hidden": True}
    return cell


def slide_type(cell) -> str | None:
    return cell.get("metadata", {}).get("slideshow", {}).get("slide_type")


def too_wide(source: str, width: int = MAX_CODE_WIDTH) -> bool:
    return any(len(line) > width for line in source.splitlines())


def shows_input(cell) -> bool:
    """Whether a deck shows this code cell's input (RISE honours JupyterLab's collapsed input)."""
    return cell.cell_type == "code" and not cell.metadata.get("jupyter", {}).get("source_hidden", False)


# ---------------------------------------------------------------------------------------------------
# which earlier cells a selected code cell needs

def _stores(node) -> set[str]:
    """Names a statement binds in the notebook's namespace (not inside functions or comprehensions)."""
    out: set[str] = set()

    def visit(n, top):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if top:
                out.add(n.name)
            return
        if isinstance(n, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            for alias in n.names:
                out.add((alias.asname or alias.name).split(".")[0])
            return
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            out.add(n.id)
        if isinstance(n, ast.NamedExpr):
            out.add(n.target.id)
        for child in ast.iter_child_nodes(n):
            visit(child, top)

    visit(node, True)
    return out


def _loads(node) -> set[str]:
    """Names a statement reads, minus those bound locally inside its functions and comprehensions."""
    loads = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    loads |= {n.target.id for n in ast.walk(node) if isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name)}
    local: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = n.args
            local |= {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x is not None}
            if not isinstance(n, ast.Lambda):
                for m in (m for b in n.body for m in ast.walk(b)):
                    if isinstance(m, ast.Name) and isinstance(m.ctx, ast.Store):
                        local.add(m.id)
                    elif isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        local.add(m.name)
                    elif isinstance(m, (ast.Import, ast.ImportFrom)):
                        local |= {(a.asname or a.name).split(".")[0] for a in m.names}
        elif isinstance(n, ast.comprehension):
            local |= {m.id for m in ast.walk(n.target) if isinstance(m, ast.Name)}
    return loads - local


def names(source: str) -> tuple[set[str], set[str]]:
    """(names the cell defines, names it reads before defining them)."""
    tree = ast.parse(source)
    defined: set[str] = set()
    free: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            pending = _loads(stmt) - {stmt.name}
            free |= {n for n in pending if n not in defined and n not in _all_stores(tree)}
        else:
            free |= _loads(stmt) - defined - (_stores(stmt) if isinstance(stmt, (ast.For, ast.While, ast.If, ast.With,
                                                                                    ast.Try)) else set())
        defined |= _stores(stmt)
    return defined, free - set(dir(builtins))


def _all_stores(tree) -> set[str]:
    out: set[str] = set()
    for stmt in tree.body:
        out |= _stores(stmt)
    return out


def dependencies(cells, selected: set[int]) -> set[int]:
    """Indices of the code cells the selected ones need: for each free name, the last earlier cell
    that defines it, recursively. Raises if a name is defined nowhere before its use."""
    info = {i: names(c.source) for i, c in enumerate(cells) if c.cell_type == "code"}
    need = set(selected)
    todo = [i for i in selected if i in info]
    while todo:
        i = todo.pop()
        for name in sorted(info[i][1]):
            src = [j for j in info if j < i and name in info[j][0]]
            if not src:
                raise NameError(f"cell {cells[i].get('id')} reads {name!r}, which no earlier cell of the chapter "
                                f"defines: fix the chapter, or tag the cell that defines it")
            j = max(src)
            if j not in need:
                need.add(j)
                todo.append(j)
    return need


def parameters_cell(cells) -> int:
    """The chapter's parameters cell (the one that calls mode())."""
    found = [i for i, c in enumerate(cells) if c.cell_type == "code" and re.search(r"\bmode\(\)", c.source)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one parameters cell calling mode(), found {len(found)}")
    return found[0]


# ---------------------------------------------------------------------------------------------------
# decks

def _rewrite_links(text: str, out: Path) -> str:
    """Relative links of chapter markdown (e.g. notation.md) point at the chapters from the deck's folder."""
    def fix(m):
        target = m.group(2)
        if re.match(r"^[a-z]+:|^#|^/", target):
            return m.group(0)
        rel = os.path.relpath(CHAPTERS / target, out).replace(os.sep, "/")
        return f"{m.group(1)}({rel})"
    return re.sub(r"(\[[^\]]*\])\(([^)\s]+)\)", fix, text)


def _deck_cell(cell, stem: str, out: Path, slide: str | None = None):
    new = copy.deepcopy(cell)
    new["id"] = f"{stem[:2]}-{cell.get('id', 'x')}"
    meta = new.setdefault("metadata", {})
    meta["slideshow"] = {"slide_type": slide or slide_type(cell) or "-"}
    meta["deck_source"] = f"chapters/{stem}.ipynb#{cell.get('id')}"
    if new.cell_type == "markdown":
        new.source = _rewrite_links(new.source, out)
    else:
        new.outputs, new.execution_count = [], None
        hide = HIDE_INPUT_TAG in meta.get("tags", []) or too_wide(new.source) or meta["slideshow"]["slide_type"] == "skip"
        if hide:
            meta["jupyter"] = {"source_hidden": True}
    return new


def _new_deck(title: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["rise"] = dict(RISE)
    nb.metadata["title"] = title
    return nb


def _chapter(stem: str) -> nbformat.NotebookNode:
    return nbformat.read(CHAPTERS / f"{stem}.ipynb", as_version=4)


def build_lecture(lecture: Lecture, out: Path = OUT) -> nbformat.NotebookNode:
    nb = _new_deck(f"Lecture {lecture.number}: {lecture.title}")
    labels = ("Labels: **[paper]** the paper's abstract only (Zhang, Li & Giannakis, ICASSP 2025, arXiv 2501.06603); "
              "**[paper, unverified]** third-party summaries of its full text; **[literature]** other cited work; "
              "**[ours]** the course's own derivations, designs and measurements.")
    nb.cells.append(_md(f"# Lecture {lecture.number}: {lecture.title}\n\n*SAM through preconditioning*, "
                        f"the two-lecture module of `chapters/README.md`.\n\n**Sources.** {lecture.sources}\n\n{labels}",
                        "slide"))
    plan = "\n".join(f"| {m} | {what} |" for m, what in lecture.plan)
    nb.cells.append(_md(f"**Plan (80 min)**\n\n| min | what |\n|---|---|\n{plan}\n\n"
                        "Run all cells before presenting (quick mode is enough for the slides; standard mode gives "
                        "the numbers the chapters quote). Built by `python tools/make_decks.py`.", "notes"))
    nb.cells.append(_code(PROJECTOR_CELL, "skip", hide=True))
    for stem in lecture.chapters:
        cells = _chapter(stem).cells
        selected = {i for i, c in enumerate(cells) if lecture.tag in c.metadata.get("tags", [])}
        part = []
        if selected:
            keep = dependencies(cells, selected | {parameters_cell(cells)})
            part = [_deck_cell(cells[i], stem, out, None if i in selected else "skip") for i in sorted(keep)]
        elif stem not in lecture.optional:
            raise ValueError(f"no cell of chapters/{stem}.ipynb is tagged {lecture.tag!r}")
        if stem in lecture.extra:
            part = lecture.extra[stem](part)
        nb.cells.extend(part)
    items = "\n".join(f"{k}. {h}" for k, h in enumerate(lecture.homework, 1))
    nb.cells.append(_md(f"## Homework\n\n{items}\n\n**After class.** {lecture.after}\n\n"
                        "Solutions for the instructor: `chapters/solutions/`.", "slide"))
    _unique_ids(nb)
    return nb


def build_unit(stem: str, out: Path = OUT) -> nbformat.NotebookNode:
    """A whole chapter as one lecture of the six-to-eight-lecture unit."""
    chapter = _chapter(stem)
    nb = _new_deck(f"Unit lecture: chapter {stem}")
    nb.cells.append(_code(PROJECTOR_CELL, "skip", hide=True))
    for i, cell in enumerate(chapter.cells):
        slide = slide_type(cell)
        if slide is None:
            text = cell.source.lstrip()
            if i == 0 or (cell.cell_type == "markdown" and text.startswith("## ")):
                slide = "slide"
            elif cell.cell_type == "markdown" and (text.startswith("### ") or text.startswith("**Answer to the")):
                slide = "subslide"
            else:
                slide = "-"
        nb.cells.append(_deck_cell(cell, stem, out, slide))
    _unique_ids(nb)
    return nb


def _unique_ids(nb):
    seen: set[str] = set()
    for k, cell in enumerate(nb.cells):
        cid = cell.get("id") or f"deck-{k}"
        while cid in seen:
            cid = f"{cid}-{k}"
        cell["id"] = cid
        seen.add(cid)


def execute(nb, path: Path, timeout: int = 900) -> None:
    """Run the deck top to bottom in its folder (figures and printed checks are stored in it)."""
    from nbclient import NotebookClient
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()


def write(nb, path: Path) -> None:
    nb.metadata.pop("widgets", None)
    nbformat.validate(nb)
    path.write_text(nbformat.writes(nb), encoding="utf-8")


def unit_chapters() -> list[str]:
    """Chapters 01-06, one per lecture of the unit (chapter 00 is pre-class setup)."""
    return sorted(p.stem for p in CHAPTERS.glob("0[1-6]_*.ipynb"))


def main(argv=None) -> list[Path]:
    ap = argparse.ArgumentParser(description="Build the lecture decks (see the module docstring).")
    ap.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT.relative_to(ROOT)})")
    ap.add_argument("--unit", action="store_true", help="also one deck per chapter 01-06 (the longer plan)")
    ap.add_argument("--no-execute", dest="execute", action="store_false", help="build without running the cells")
    ap.add_argument("--lecture", type=int, action="append", help="only this lecture of the module (repeatable)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rise.css").write_text(RISE_CSS, encoding="utf-8")
    decks = [(lec.name, build_lecture(lec, args.out)) for lec in MODULE
             if not args.lecture or lec.number in args.lecture]
    if args.unit:
        decks += [(f"unit-{stem[:2]}", build_unit(stem, args.out)) for stem in unit_chapters()]
    written = []
    for name, nb in decks:
        path = args.out / f"{name}.ipynb"
        if args.execute:
            print(f"executing {name} (SAMLIB_MODE={os.environ.get('SAMLIB_MODE', 'standard')}) ...", file=sys.stderr)
            execute(nb, path)
        write(nb, path)
        written.append(path)
        print(path)
    return written


if __name__ == "__main__":
    main()
