"""The lecture decks (tools/make_decks.py): the chapters' slide metadata, the builder's dependency
analysis, and the decks of the two-lecture module built and executed in quick mode."""
import importlib.util
import json
import os
import pathlib
import re
import sys

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


decks = _load("make_decks", ROOT / "tools" / "make_decks.py")


def _nb(*sources):
    return [nbformat.v4.new_code_cell(s) for s in sources]


# ---------------------------------------------------------------------------------------------------
# which earlier cells a selected cell needs

def test_names_defined_and_read():
    defined, free = decks.names("import torch as T\nx = T.ones(3)\n\ndef f(a):\n    def inner():\n        return a + y\n"
                                "    return inner() + z\nw = [v * k for v in x]\nx += 1\n")
    assert defined == {"T", "x", "f", "w"}
    assert free == {"y", "z", "k"}          # inner is local to f, v to the comprehension, a a parameter
    assert decks.names("for i in range(3):\n    total = i\nprint(total)\n") == ({"i", "total"}, set())
    assert decks.names("n = n + 1\n")[1] == {"n"}      # read before it is assigned


def test_dependencies_take_the_last_definition_before_the_cell():
    cells = _nb("import math", "g = 1.0", "h = math.pi", "g = 2.0 * h", "print(g)", "g = 0")
    assert decks.dependencies(cells, {4}) == {4, 3, 2, 0}   # cell 1's g is overwritten by cell 3's
    assert decks.dependencies(cells, {1}) == {1}
    with pytest.raises(NameError, match="'undefined_name'"):
        decks.dependencies(_nb("x = 1", "print(undefined_name)"), {1})


def test_too_wide():
    assert decks.too_wide("a" * decks.MAX_CODE_WIDTH) is False
    assert decks.too_wide("x = 1\n" + "a" * (decks.MAX_CODE_WIDTH + 1)) is True


# ---------------------------------------------------------------------------------------------------
# the chapters' slide metadata

def _tagged(stem, tag):
    nb = nbformat.read(ROOT / "chapters" / f"{stem}.ipynb", as_version=4)
    return nb, [c for c in nb.cells if tag in c.metadata.get("tags", [])]


@pytest.mark.parametrize("lecture", decks.MODULE, ids=lambda lec: lec.name)
def test_chapter_cells_carry_slide_metadata(lecture):
    for stem in lecture.chapters:
        nb, tagged = _tagged(stem, lecture.tag)
        if not tagged and stem in lecture.optional:
            continue                # not tagged yet: the lecture's generated slides stand in (see MODULE)
        assert tagged, f"no cell of {stem} is tagged {lecture.tag}"
        for cell in tagged:
            assert decks.slide_type(cell) in decks.SLIDE_TYPES, f"{stem} {cell.id}: slide type {decks.slide_type(cell)!r}"
        assert decks.slide_type(tagged[0]) == "slide", f"{stem}: the lecture's first cell must start a slide"
        for cell in nb.cells:       # slide metadata only where a lecture uses the cell
            if "slideshow" in cell.metadata:
                assert any(t.startswith("lecture-") for t in cell.metadata.get("tags", [])), cell.id


# ---------------------------------------------------------------------------------------------------
# the decks, built and executed

#: What makes a shown slide fetch something from another machine: a remote image, script, frame or
#: style sheet in markdown or in an HTML/SVG output (a plain link is not fetched until clicked).
FETCH = re.compile(r"<(?:img|script|iframe|video|audio|source|embed)\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//"
                   r"|<link\b[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//|@import|url\(\s*[\"']?(?:https?:)?//"
                   r"|!\[[^\]]*\]\(\s*<?(?:https?:)?//", re.I)
HOMEWORK_ITEM = re.compile(r"chapter (\d\d), exercises? (\d+)", re.I)


def _fetches(nb):
    hits = []
    for cell in nb.cells:
        texts = [cell.source] if cell.cell_type == "markdown" else []
        for out in cell.get("outputs", []):
            for mime in ("text/html", "image/svg+xml", "text/markdown"):
                value = out.get("data", {}).get(mime)
                if value:
                    texts.append(value if isinstance(value, str) else "".join(value))
        hits += [(cell.id, m.group(0)) for text in texts for m in FETCH.finditer(text)]
    return hits


def test_fetch_pattern():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(s) for s in (
        "![logo](https://example.org/a.png)", '<img src="http://x/y.png">', '<script src="//cdn.x/mathjax.js">',
        '<link rel="stylesheet" href="https://cdn/reveal.css">', "@import \"https://fonts/x.css\";")]
    assert len(_fetches(nb)) == 5
    nb.cells = [nbformat.v4.new_markdown_cell("See [arXiv](https://arxiv.org/abs/2501.06603), `a//b`, "
                                              "![local](figure.png).")]
    assert _fetches(nb) == []


def _exercises(stem):
    """The numbers of a chapter's exercises (its "## Exercises" list)."""
    nb = nbformat.read(ROOT / "chapters" / f"{stem}.ipynb", as_version=4)
    text = next(c.source for c in nb.cells if c.cell_type == "markdown" and "## Exercises" in c.source)
    text = text[text.index("## Exercises"):]
    return {int(n) for n in re.findall(r"^(\d+)\. ", text, re.M)}


@pytest.mark.parametrize("lecture", decks.MODULE, ids=lambda lec: lec.name)
def test_homework_names_exercises_that_exist(lecture):
    """Every homework item of a deck names a chapter and an exercise number the chapter has."""
    stems = {p.stem[:2]: p.stem for p in (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")}
    for item in lecture.homework:
        found = HOMEWORK_ITEM.findall(item)
        assert found, f"homework item names no 'chapter NN, exercise K': {item!r}"
        for chapter, number in found:
            assert int(number) in _exercises(stems[chapter]), f"chapter {chapter} has no exercise {number}: {item!r}"

def _check_structure(nb, deck_dir):
    assert nb.metadata["rise"]["scroll"] is True
    assert nb.metadata["rise"]["theme"] in decks.OFFLINE_THEMES       # other reveal.js themes load Google Fonts
    assert (nb.metadata["rise"]["width"], nb.metadata["rise"]["height"]) == decks.SLIDE_SIZE
    types = [decks.slide_type(c) for c in nb.cells]
    assert all(t in decks.SLIDE_TYPES for t in types), types
    shown = [c for c, t in zip(nb.cells, types) if t not in ("skip", "notes")]
    assert decks.slide_type(shown[0]) == "slide" and shown[0].cell_type == "markdown"
    assert shown[-1].source.startswith("## Homework")
    for cell in nb.cells:
        if cell.cell_type == "code" and decks.shows_input(cell):
            assert not decks.too_wide(cell.source), f"{cell.id}: a shown code line is wider than " \
                                                    f"{decks.MAX_CODE_WIDTH} characters"
        if cell.cell_type == "code" and decks.slide_type(cell) == "skip":
            assert not decks.shows_input(cell)
        if cell.cell_type == "markdown":
            for target in re.findall(r"\]\(([^)\s]+)\)", cell.source):
                if not re.match(r"^[a-z]+:", target):
                    assert (deck_dir / target).exists(), f"{cell.id}: broken link {target}"
    ids = [c.id for c in nb.cells]
    assert len(ids) == len(set(ids))
    assert "widgets" not in nb.metadata


def test_module_decks_build_and_run(tmp_path, monkeypatch):
    """Both decks of the two-lecture module: built, executed in quick mode without an error, and
    shaped as slides (the setup cells they need included, long code hidden, figures present)."""
    monkeypatch.setenv("SAMLIB_MODE", "quick")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    paths = decks.main(["--out", str(tmp_path)])
    assert [p.name for p in paths] == ["lecture1.ipynb", "lecture2.ipynb"]
    css = (tmp_path / "rise.css").read_text(encoding="utf-8")
    assert "http" not in css and "@import" not in css            # nothing fetched from the internet
    assert "width: %dpx !important; height: %dpx !important" % decks.SLIDE_SIZE in css   # scaled, not cut off
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        _check_structure(nb, tmp_path)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors
        images = [c.id for c in nb.cells if c.cell_type == "code"
                  for o in c.outputs if "image/png" in o.get("data", {})]
        assert len(images) >= 2, f"{path.name}: figures {images}"
        # every selected cell of the chapters is in the deck, with its chapter's slide type
        lecture = next(lec for lec in decks.MODULE if lec.name == path.stem)
        by_source = {c.metadata.get("deck_source"): c for c in nb.cells}
        for stem in lecture.chapters:
            for cell in _tagged(stem, lecture.tag)[1]:
                twin = by_source[f"chapters/{stem}.ipynb#{cell.id}"]
                assert decks.slide_type(twin) == decks.slide_type(cell)
                assert twin.source == cell.source or cell.cell_type == "markdown"
        assert not _fetches(nb), f"{path.name}: slides that fetch from the network: {_fetches(nb)[:5]}"
        assert 'plotting.style("projector")' in next(c.source for c in nb.cells if c.cell_type == "code")
        homework = [c for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## Homework")]
        assert len(homework) == 1 and decks.slide_type(homework[0]) == "slide"
        assert len(re.findall(r"^\d+\. ", homework[0].source, re.M)) == len(lecture.homework)
    # lecture 2's bridge: a slide, then its figure drawn from the committed record
    lecture2 = nbformat.read(tmp_path / "lecture2.ipynb", as_version=4)
    at = [k for k, c in enumerate(lecture2.cells) if c.cell_type == "markdown" and c.source.startswith("## Bridge")]
    assert len(at) == 1 and decks.slide_type(lecture2.cells[at[0]]) == "slide"
    figure = lecture2.cells[at[0] + 1]
    assert figure.cell_type == "code" and any("image/png" in o.get("data", {}) for o in figure.outputs)
    record = json.loads(decks.BRIDGE_DATA.read_text(encoding="utf-8"))
    assert repr([(r["noise"], r["batch"], r["cos"], r["se"]) for r in record["rows"]]) in figure.source


def test_unit_decks_build(tmp_path):
    """The six-to-eight-lecture unit: one deck per chapter 01-06, every chapter cell in order."""
    for stem in decks.unit_chapters():
        nb = decks.build_unit(stem, tmp_path)
        chapter = nbformat.read(ROOT / "chapters" / f"{stem}.ipynb", as_version=4)
        assert [c.metadata["deck_source"] for c in nb.cells[1:]] == \
            [f"chapters/{stem}.ipynb#{c.id}" for c in chapter.cells]
        types = [decks.slide_type(c) for c in nb.cells[1:]]
        assert types[0] == "slide" and types.count("slide") >= 3
        for cell in nb.cells:
            if cell.cell_type == "code" and decks.shows_input(cell):
                assert not decks.too_wide(cell.source)
    assert [s[:2] for s in decks.unit_chapters()] == ["01", "02", "03", "04", "05", "06"]


def test_bridge_record_is_complete():
    """The precomputed bridge figure's numbers: every (noise rate, batch size) of its settings,
    alignments in [-1, 1], and the command that made them."""
    record = json.loads(decks.BRIDGE_DATA.read_text(encoding="utf-8"))
    s = record["settings"]
    assert {(r["noise"], r["batch"]) for r in record["rows"]} == {(n, b) for n in s["rates"] for b in s["batches"]}
    assert all(-1 <= r["cos"] <= 1 and r["se"] >= 0 for r in record["rows"])
    assert record["command"].startswith("OMP_NUM_THREADS=1 python tools/lectures/bridge_alignment.py")
