"""Sphinx configuration of the rendered book (Sphinx + MyST-NB + the Jupyter Book theme).

Build it from the repository root (README.md, "Rendered book"):

    sphinx-build -c book . book/_build/html                    # standard mode (the default)
    SAMLIB_MODE=quick sphinx-build -c book . /tmp/book/html    # quick mode (what the tests build)

The source folder is the repository root, restricted to the landing pages in ``book/`` and the
course in ``chapters/``: every chapter, every solution, the chapter map and the notation page are
executed and rendered from the course's own files, nothing is copied. Everything the pages need
(MathJax, fonts, scripts) is served from the built folder: the book works with no network.
"""
from __future__ import annotations

import json
import os
import pathlib
import re

BOOK = pathlib.Path(__file__).resolve().parent
ROOT = BOOK.parent
CHAPTERS = ROOT / "chapters"

# The notebooks read SAMLIB_MODE (default standard); their kernels inherit this environment and
# import this checkout's samlib.
MODE = os.environ.setdefault("SAMLIB_MODE", "standard").strip().lower()
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")

project = "Preconditioned SAM: a course on sharpness-aware minimization"
author = "the course's authors"
copyright = "the course's authors, MIT license"

extensions = [
    "myst_nb",
    "sphinx-mathjax-offline",  # MathJax 3 from a local copy (copied to _static/mathjax), no CDN
]

root_doc = "book/index"
include_patterns = ["book/*.md", "chapters/*.ipynb", "chapters/*.md", "chapters/solutions/*.ipynb"]
exclude_patterns = ["**/_build", "**/.ipynb_checkpoints", ".*", "samlib", "tests", "data", "runs", "chapters/results"]
templates_path = ["_templates"]
html_additional_pages = {"index": "redirect.html"}  # the site's index.html opens book/index.html
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]

# MyST: $...$ and $$...$$ maths, amsmath environments, ::: fences.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
myst_dmath_double_inline = True  # $$...$$ inside a paragraph, as JupyterLab renders it

# Execution: every notebook, in SAMLIB_MODE, cached per mode next to the output folder (a rebuild
# re-executes only the notebooks that changed). An error in any cell fails the build.
nb_execution_mode = "cache"
nb_execution_timeout = {"quick": 600}.get(MODE, 3600)  # seconds per cell
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
# Live widgets need a kernel: no widget JavaScript from a CDN. The static figure each widget cell
# draws is rendered; _static/book.css says where to move the sliders.
nb_ipywidgets_js = {}
# Markdown that a cell displays (tables with maths, e.g. chapter 07) is parsed as MyST, so its $...$ renders.
nb_render_markdown_format = "myst"
# A widgets.show(...) output carries the live view and a static PNG of its figure; MyST-NB would pick the
# view (a <script> that needs a kernel) over the PNG, so drop the view: the book shows the figure.
nb_mime_priority_overrides = [("*", "application/vnd.jupyter.widget-view+json", None)]

html_theme = "sphinx_book_theme"
html_title = "Preconditioned SAM"
html_static_path = ["_static"]
html_css_files = ["book.css"]
html_last_updated_fmt = None
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "use_repository_button": False,
}


# ---- generated parts of the landing page and the references page -----------------------------

def _chapters() -> list[pathlib.Path]:
    return sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb"))


def _markdown_cells(path: pathlib.Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]


def _title(path: pathlib.Path) -> str:
    for text in _markdown_cells(path):
        m = re.search(r"^#\s+(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    return path.stem


def _map_topics() -> dict[str, str]:
    """Chapter file -> its topic line in chapters/README.md's chapter map (empty if none)."""
    readme = CHAPTERS / "README.md"
    topics = {}
    if readme.exists():
        for m in re.finditer(r"^\|\s*\[\d+\]\(([^)]+\.ipynb)\)\s*\|\s*([^|]+)\|", readme.read_text(encoding="utf-8"), re.M):
            topics[m.group(1).strip()] = m.group(2).strip()
    return topics


def chapter_list() -> str:
    """One line per chapter, in order: its title (linked) and its topic from the chapter map."""
    topics = _map_topics()
    lines = []
    for path in _chapters():
        title, topic = _title(path), topics.get(path.name, "")
        head, _, rest = topic.partition(":")
        if rest and head.strip().lower() in title.lower():  # "Flat minima: ..." under "Chapter 01 — Flat minima"
            topic = rest.strip()
        lines.append(f"- [{title}](../chapters/{path.name})" + (f": {topic}" if topic else ""))
    return "\n".join(lines)


def toctrees() -> str:
    """The navigation: chapters, notation (when present), references, solutions."""
    chapters = [f"/chapters/{p.stem}" for p in _chapters()]
    solutions = [f"/chapters/solutions/{p.stem}" for p in sorted((CHAPTERS / "solutions").glob("*.ipynb"))]
    extra = [f"/chapters/{name}" for name in ("notation", "README") if (CHAPTERS / f"{name}.md").exists()]
    blocks = [("Chapters", chapters), ("Reference", extra + ["references"]), ("Solutions", solutions)]
    return "\n\n".join(
        f"```{{toctree}}\n:caption: {caption}\n:hidden:\n:maxdepth: 1\n\n" + "\n".join(docs) + "\n```"
        for caption, docs in blocks if docs)


def references() -> str:
    """Every chapter's References section (up to the next heading of its level), under its title."""
    parts = []
    for path in _chapters():
        text = "\n\n".join(_markdown_cells(path))
        m = re.search(r"^(#+)\s*References\b[^\n]*\n", text, re.M)
        if not m:
            continue
        rest = text[m.end():]
        end = re.search(rf"^#{{1,{len(m.group(1))}}}\s", rest, re.M)
        body = rest[:end.start()] if end else rest
        body = re.sub(r"^(#+)", r"\1##", body.strip(), flags=re.M)  # keep its sub-headings below ours
        parts.append(f"## [{_title(path)}](../chapters/{path.name})\n\n{body}")
    return "\n\n".join(parts) or "No chapter has a References section yet."


def _fill(app, docname, source):
    if docname in ("book/index", "book/references"):
        text = source[0]
        for key, make in (("chapter-list", chapter_list), ("toctrees", toctrees), ("references", references),
                          ("mode", lambda: MODE)):
            text = text.replace(f"<!-- {key} -->", make())
        source[0] = text


def _per_mode(app, config):
    # Executed notebooks are cached per mode beside the output folder (book/_build/.jupyter_cache_standard):
    # a quick build never feeds a standard one.
    config.nb_execution_cache_path = str(pathlib.Path(app.outdir).parent / f".jupyter_cache_{MODE}")


def _always_refresh(app, env, added, changed, removed):
    # The landing and references pages are made from the chapters: rebuild them every time.
    return [d for d in ("book/index", "book/references") if d in env.found_docs]


def setup(app):
    app.connect("env-get-outdated", _always_refresh)
    # A change of mode re-reads (re-executes) every page instead of reusing the last build's.
    app.add_config_value("samlib_mode", MODE, "env")
    app.connect("config-inited", _per_mode)
    app.connect("source-read", _fill)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
