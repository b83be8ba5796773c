"""Notebooks are committed clean, and every chapter has its solutions notebook and required parts.

Markdown must not carry the damage that a non-raw Python string does to LaTeX: ``"\\nabla"`` written without
``r""`` becomes a newline followed by ``abla``, ``"\\rho"`` a carriage return followed by ``ho``, ``"\\frac"`` a
form feed followed by ``rac``. ``broken_escapes`` finds both kinds, and a test proves it catches the damage
that chapter 02 once shipped.
"""
import json
import pathlib
import re

import pytest

CHAPTERS = pathlib.Path(__file__).resolve().parents[1] / "chapters"
NOTEBOOKS = sorted(p for p in CHAPTERS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
MAIN = [p for p in NOTEBOOKS if p.parent == CHAPTERS]
# Chapters whose last section must be "## References" with a link per entry. Extend to every chapter once each
# has its bibliography (issue 10 asks for all of them).


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


# LaTeX commands that begin with a letter a Python string escape consumes: \a \b \f \n \r \t \v.
_ESCAPED_COMMANDS = (
    "alpha approx ast arg beta bar bf big bigl bigr binom boxed bullet frac forall flat frown "
    "nabla neq nu not norm newline ni nmid nleq ngeq nexists natural nparallel nsubseteq noindent nonumber "
    "rho right rightarrow rangle rceil rfloor rm real tau theta times text textbf textit tilde top triangle "
    "tfrac vec vee varepsilon varphi vartheta varrho vert"
).split()
# What is left after the escape ate the command's first letter (two letters or more, so that ordinary
# one-letter variables at the start of a line of math are not flagged).
_FRAGMENTS = sorted({c[1:] for c in _ESCAPED_COMMANDS if len(c) >= 3}, key=len, reverse=True)
_FRAGMENT_AFTER_BREAK = re.compile(r"[\n\t](?:" + "|".join(_FRAGMENTS) + r")(?![a-z])")
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
_MATH = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$(?!\$)(.+?)(?<![\\$])\$", re.S)


def broken_escapes(markdown: str) -> list[str]:
    """Places in a markdown cell that look like LaTeX damaged by Python string escapes.

    * any control character other than newline and tab (``\\r``, ``\\f``, ``\\a``, ``\\b``, ``\\v`` survivors);
    * inside math: a line break or tab directly followed by what is left of a LaTeX command whose first
      letter an escape consumed (``abla``, ``ho``, ``rac``, ``au``, ``ext``, ...);
    * an inline ``$...$`` whose content starts with a line break (``$`` then newline then ``abla``).
    """
    problems = [f"control character {ord(ch):#04x} at {i}" for i, ch in enumerate(markdown)
                if ord(ch) < 32 and ch not in "\n\t"]
    text = _CODE.sub(lambda m: " " * len(m.group()), markdown)
    for m in _MATH.finditer(text):
        display, inline = m.group(1), m.group(2)
        body = display if display is not None else inline
        for bad in _FRAGMENT_AFTER_BREAK.finditer(body):
            problems.append(f"math {body.strip()[:40]!r}: a line break or tab before {bad.group()[1:]!r}")
        if inline is not None and inline.startswith("\n"):
            problems.append(f"inline math starts with a line break: {inline[:30]!r}")
    return problems


def test_there_are_chapters():
    assert {p.name[:2] for p in MAIN} >= {"00", "01", "02", "03", "04", "05", "06", "07", "08", "09"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(CHAPTERS)))
def test_notebook_is_clean(path):
    nb = _load(path)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, f"{path.name} has outputs"
    assert "widgets" not in nb.get("metadata", {}), f"{path.name} carries saved widget state"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(CHAPTERS)))
def test_markdown_has_no_broken_escapes(path):
    for cell in _load(path)["cells"]:
        if cell["cell_type"] == "markdown":
            problems = broken_escapes("".join(cell["source"]))
            assert not problems, f"{path.name}, cell {cell.get('id')}: {problems} (write markdown with r-strings)"


# Chapter 02's cell 19 as it was shipped at commit 2f053c2: "\nabla" and "\rho" written into a non-raw string.
_DAMAGED = ("stops in front of the ridge, at a point where the gradient **at the perturbed point** vanishes,\n$\n"
            "abla L(w+\\epsilon^*(w)) = 0$. That is a stationary point of SAM's update, not a minimum of $L$\n"
            "**[ours, an observation on this toy]**. With a constant $\nho$ and exact gradients nothing moves it\n"
            "on; minibatch noise or a decaying $\nho$ does (exercise 5). Chapter 04 meets the same $\nho$-induced\n")


@pytest.mark.parametrize("damaged, clean", [
    (_DAMAGED, _DAMAGED.replace("$\nabla", "$\\nabla").replace("$\nho", "$\\rho")),
    ("a ratio $\frac{1}{2}$ and $\\tau$", "a ratio $\\frac{1}{2}$ and $\\tau$"),      # form feed + "rac"
    ("with $\rho = 0.3$", "with $\\rho = 0.3$"),                                       # carriage return + "ho"
    ("time $\tau_t$ and $x$", "time $\\tau_t$ and $x$"),                               # tab + "au"
    ("$$\n\\min_w\nabla L(w)\n$$", "$$\n\\min_w\\nabla L(w)\n$$"),                     # display math
])
def test_broken_escape_detector(damaged, clean):
    assert broken_escapes(damaged), "the detector must flag the damaged text"
    assert not broken_escapes(clean), broken_escapes(clean)


@pytest.mark.parametrize("path", MAIN, ids=lambda p: p.name)
def test_chapter_structure(path):
    nb = _load(path)
    text = "\n".join("".join(c["source"]) for c in nb["cells"])
    for part in ("Learning objectives", "Prerequisites", "Runtime", "## Summary", "## Exercises"):
        assert part in text, f"{path.name} lacks '{part}'"
    assert re.search(r"\bquick\b.*\bstandard\b.*\bfull\b", text), f"{path.name} lacks runtimes per mode"
    params = [c for c in nb["cells"] if c["cell_type"] == "code" and "mode()" in "".join(c["source"])]
    assert len(params) == 1, f"{path.name} must have exactly one parameters cell reading SAMLIB_MODE"
    exercises = text.split("## Exercises", 1)[1].split("## References", 1)[0]
    assert 3 <= len(re.findall(r"^\d+\. ", exercises, re.M)) <= 6
    if (CHAPTERS / "solutions").is_dir():            # a student release ships without the solutions folder
        solutions = CHAPTERS / "solutions" / f"{path.stem}_solutions.ipynb"
        assert solutions.exists(), f"missing {solutions.name}"
    else:                                            # ... and holds the exercise notebooks instead
        exercises = CHAPTERS / "exercises" / f"{path.stem}_exercises.ipynb"
        assert exercises.exists(), f"missing {exercises.name}"


@pytest.mark.parametrize("path", MAIN, ids=lambda p: p.name)
def test_chapter_ends_with_linked_references(path):
    cells = _load(path)["cells"]
    last = "".join(cells[-1]["source"])
    assert "## References" in last, f"{path.name}: the last cell must hold the References section"
    entries = []   # one per "- " item, its indented continuation lines joined to it
    for ln in last.split("## References", 1)[1].splitlines():
        if ln.startswith("- "):
            entries.append(ln)
        elif entries and ln.startswith(" ") and ln.strip():
            entries[-1] += " " + ln.strip()
    assert entries, f"{path.name}: no references listed"
    for entry in entries:
        year = re.search(r"\b(19|20)\d\d\b", entry)
        assert year, f"{path.name}: reference without a year: {entry[:60]}"
        # Works from before arXiv and DOIs (e.g. Kantorovich 1948) may instead give volume and pages.
        printed = int(year.group()) < 1990 and re.search(r"\b\d+, \d+[–-]\d+", entry)
        assert re.search(r"\((?:https?://)[^)]+\)", entry) or printed, \
            f"{path.name}: reference without a link: {entry[:60]}"


@pytest.mark.parametrize("path", MAIN, ids=lambda p: p.name)
def test_derivations_are_checked_by_assertions(path):
    nb = _load(path)
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    if path.name.startswith("00"):
        assert "assert" in code
    else:
        assert code.count("assert") >= 3, f"{path.name}: derivations need numerical checks that assert"
