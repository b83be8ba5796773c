"""The course in a classroom: a student release without solutions, and graders for the instructor.

Build (from the repository root; the release is the committed ``HEAD`` unless ``--source`` says otherwise)::

    python tools/release.py build --out ../presam-student --grading ../presam-grading

``--out`` gets a fresh git repository with one commit and no history: the course without
``chapters/solutions/``, with ``chapters/exercises/NN_*_exercises.ipynb`` (stubs, and checks that
students run with ``grader.check("ex4")``), chapter text that points to those notebooks, and a test
suite that passes without the solutions. ``--grading`` (never inside ``--out``) gets, per chapter, the
solutions, Otter-Grader's autograder zip (public and hidden tests) and ``rubric.md``.

Grade submissions locally (Otter-Grader's ``otter run``: no Docker, nothing downloaded)::

    python tools/release.py grade --grading ../presam-grading --chapter 03 alice.ipynb bob.ipynb --csv scores.csv
    python tools/release.py grade --grading ../presam-grading --chapter 02 --questions ex1_code,ex3_code *.ipynb  # a subset

Convert a chapter's solutions notebook into an Otter "assign" master notebook::

    python tools/release.py scaffold chapters/solutions/05_gradient_noise_solutions.ipynb   # mechanical first step
    python tools/release.py check chapters/solutions/05_gradient_noise_solutions.ipynb      # lint the result

The procedure is in ``chapters/README.md`` ("Homework") and in this module's ``scaffold`` docstring.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

import nbformat
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_MARK = "# ASSIGNMENT CONFIG"
# What the student release leaves out: the solutions and everything that grades with them.
EXCLUDED = ("chapters/solutions", "tests/test_release.py", "tests/fixtures/homework", "tools/release.py")
INSTRUCTOR_ONLY = re.compile(r"<!-- instructor-only -->.*?<!-- /instructor-only -->\n?", re.S)
# The Otter configuration every converted notebook starts with (``check`` compares it).
ASSIGNMENT_CONFIG = {
    "init_cell": True,
    "check_all_cell": True,
    "export_cell": False,
    "run_tests": False,
    "generate": True,
    "tests": {"files": False, "ok_format": True},
}
TEXT_SUFFIXES = {".md", ".py", ".ipynb", ".txt", ".toml", ".yml", ".yaml", ".cfg", ".ini", ""}


class ReleaseError(RuntimeError):
    """Something in the course stops the release; the message names the file and the fix."""


# ---- the assignment format ---------------------------------------------------------------------

def is_master(nb) -> bool:
    """Whether a solutions notebook is in Otter's assignment format (its first cell is the config)."""
    return bool(nb.cells) and nb.cells[0].cell_type == "raw" and nb.cells[0].source.startswith(CONFIG_MARK)


def _raw_config(cell) -> dict | None:
    if cell.cell_type != "raw":
        return None
    lines = cell.source.splitlines()
    if not lines or not lines[0].startswith("# BEGIN QUESTION"):
        return None
    return yaml.safe_load("\n".join(lines[1:])) or {}


def _boundary(cell) -> str | None:
    if cell.cell_type != "raw":
        return None
    first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
    m = re.fullmatch(r"# (BEGIN|END) (QUESTION|SOLUTION|TESTS|PROMPT)", first)
    return f"{m.group(1)} {m.group(2)}" if m else None


def questions(nb) -> list[dict]:
    """The questions of a master notebook: name, points, manual, exercise number, prompt, solution
    markdown, solution code and test cells (each test: source and whether it is hidden)."""
    out, current, block = [], None, None
    for cell in nb.cells:
        b = _boundary(cell)
        if b == "BEGIN QUESTION":
            cfg = _raw_config(cell)
            current = {"name": cfg["name"], "points": cfg.get("points", 1), "manual": bool(cfg.get("manual")),
                       "prompt": [], "solution_md": [], "solution_code": [], "tests": []}
            m = re.match(r"ex(\d+)", cfg["name"])
            current["exercise"] = int(m.group(1)) if m else None
            out.append(current)
            block = "question"
        elif b == "END QUESTION":
            current, block = None, None
        elif b in ("BEGIN SOLUTION", "BEGIN TESTS", "BEGIN PROMPT"):
            block = b.split()[1].lower()
        elif b in ("END SOLUTION", "END TESTS", "END PROMPT"):
            block = "question"
        elif current is not None:
            if block == "tests":
                first = cell.source.lstrip().splitlines()[0] if cell.source.strip() else ""
                hidden = bool(re.search(r"BEGIN TEST CONFIG", first)) and bool(
                    re.search(r"^hidden:\s*true\s*$", cell.source, re.M))
                current["tests"].append({"source": cell.source, "hidden": hidden})
            elif block == "solution":
                key = "solution_md" if cell.cell_type == "markdown" else "solution_code"
                current[key].append(cell.source)
            elif cell.cell_type == "markdown":
                current["prompt"].append(cell.source)
    return out


def chapter_exercises(chapter_nb) -> list[int]:
    """The numbers of the exercises listed under the chapter's "## Exercises"."""
    text = "\n".join(c.source for c in chapter_nb.cells if c.cell_type == "markdown")
    if "## Exercises" not in text:
        return []
    section = re.split(r"\n## ", text.split("## Exercises", 1)[1], maxsplit=1)[0]
    return [int(n) for n in re.findall(r"^(\d+)\. ", section, re.M)]


def check_master(path: pathlib.Path, chapter: pathlib.Path | None = None) -> list[str]:
    """Problems with a converted solutions notebook (empty list: fine). Checks the config, that every
    exercise of the chapter has a question, that autograded questions have public and hidden tests
    whose code cannot print (assert statements only), and that manual questions carry a rubric."""
    nb = nbformat.read(path, as_version=4)
    if not is_master(nb):
        return [f"{path.name}: the first cell is not a raw '{CONFIG_MARK}' cell"]
    problems = []
    config = yaml.safe_load(nb.cells[0].source.split("\n", 1)[1]) or {}
    for key, value in ASSIGNMENT_CONFIG.items():
        if config.get(key) != value:
            problems.append(f"{path.name}: assignment config needs {key}: {value!r} (has {config.get(key)!r})")
    if config.get("name") != path.stem.replace("_solutions", ""):
        problems.append(f"{path.name}: assignment config needs name: {path.stem.replace('_solutions', '')}")
    qs = questions(nb)
    if not qs:
        problems.append(f"{path.name}: no '# BEGIN QUESTION' cells")
    names = [q["name"] for q in qs]
    if len(set(names)) != len(names):
        problems.append(f"{path.name}: question names repeat: {names}")
    for q in qs:
        where = f"{path.name} question {q['name']}"
        if q["exercise"] is None:
            problems.append(f"{where}: name it exN or exN_something (N = the chapter's exercise number)")
        if not q["prompt"]:
            problems.append(f"{where}: no prompt (a markdown cell right after '# BEGIN QUESTION')")
        if q["manual"]:
            if not any("Rubric" in md for md in q["solution_md"]):
                problems.append(f"{where}: a manual question needs a '**Rubric**' list in its solution markdown")
            if q["tests"]:
                problems.append(f"{where}: manual questions have no tests (split off an exN_code question)")
        else:
            if not any(not t["hidden"] for t in q["tests"]):
                problems.append(f"{where}: needs at least one public test (students run it with grader.check)")
            if not any(t["hidden"] for t in q["tests"]):
                problems.append(f"{where}: needs at least one hidden test (the grader's independent check)")
            if not any("BEGIN SOLUTION" in c or "# SOLUTION" in c for c in q["solution_code"]):
                problems.append(f"{where}: no '# BEGIN SOLUTION' / '# END SOLUTION' lines: students would get the answer")
            for t in q["tests"]:
                problems += [f"{where}: test line '{line}' prints or shows a value; tests must be assert statements"
                             for line in _expression_lines(t["source"])]
    if chapter is not None:
        wanted = set(chapter_exercises(nbformat.read(chapter, as_version=4)))
        have = {q["exercise"] for q in qs}
        if wanted - have:
            problems.append(f"{path.name}: exercises {sorted(wanted - have)} of {chapter.name} have no question")
        if have - wanted:
            problems.append(f"{path.name}: questions for exercises {sorted(have - wanted)} not in {chapter.name}")
    return problems


def _expression_lines(source: str) -> list[str]:
    """Top-level expression statements (other than the test-config string and calls to print-free
    functions) in a test cell: in Otter's OK format their output would be compared with nothing."""
    import ast
    tree = ast.parse(source)
    bad = []
    for i, node in enumerate(tree.body):
        if isinstance(node, ast.Expr):
            if i == 0 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                continue
            bad.append(ast.unparse(node)[:80])
    return bad


# ---- scaffold: the mechanical first step of converting a chapter --------------------------------

def scaffold(path: pathlib.Path, chapter: pathlib.Path) -> nbformat.NotebookNode:
    """Wrap a solutions notebook's "**Exercise N.**" sections into Otter questions.

    Each exercise becomes ``# BEGIN QUESTION`` (name ``exN``, points 1), a prompt (the exercise's text
    from the chapter's list), ``# BEGIN SOLUTION`` around the solution's markdown and code cells, and an
    empty ``# BEGIN TESTS`` block. Cells before the first exercise stay as setup. Then, by hand:

    1. Split each exercise into a manual question (``exN_proof``: ``manual: true``, points, the model
       answer and a ``**Rubric**`` list in the solution markdown) and an autograded one (``exN_code``).
    2. In solution code, put ``# BEGIN SOLUTION`` / ``# END SOLUTION`` around the lines a student
       writes (keep function signatures and given data outside them), so the stub is clear.
    3. Move the solution's asserts into test cells: public ones (messages that tell what is wrong) and
       hidden ones (``\"\"\" # BEGIN TEST CONFIG`` / ``hidden: true`` / ``\"\"\" # END TEST CONFIG``) that
       check against something independent of the solution: a closed form, finite differences,
       brute force, a from-scratch implementation. Tests are assert statements only, with ``_t``-prefixed
       names (they run in the student's namespace).
    4. Add wrong answers to ``tests/fixtures/homework/NN_*.yml`` (see ``tests/test_release.py``).
    5. ``python tools/release.py check ...``; ``pytest chapters/solutions/NN_*_solutions.ipynb``;
       ``pytest tests/test_release.py``.
    """
    nb = nbformat.read(path, as_version=4)
    if is_master(nb):
        raise ReleaseError(f"{path} is already in the assignment format")
    prompts = _exercise_items(nbformat.read(chapter, as_version=4))
    name = path.stem.replace("_solutions", "")
    cfg = yaml.safe_dump({"name": name, **ASSIGNMENT_CONFIG}, sort_keys=False)
    cells = [nbformat.v4.new_raw_cell(f"{CONFIG_MARK}\n{cfg}")]
    current = None

    def close():
        if current is not None:
            cells.extend([nbformat.v4.new_raw_cell("# END SOLUTION"), nbformat.v4.new_raw_cell("# BEGIN TESTS"),
                          nbformat.v4.new_raw_cell("# END TESTS"), nbformat.v4.new_raw_cell("# END QUESTION")])

    for cell in nb.cells:
        m = re.match(r"\*\*Exercise (\d+)\.\*\*", cell.source) if cell.cell_type == "markdown" else None
        if m:
            close()
            current = int(m.group(1))
            cells.append(nbformat.v4.new_raw_cell(f"# BEGIN QUESTION\nname: ex{current}\npoints: 1"))
            cells.append(nbformat.v4.new_markdown_cell(f"**Exercise {current}.** {prompts.get(current, '')}".rstrip()))
            cells.append(nbformat.v4.new_raw_cell("# BEGIN SOLUTION"))
        cells.append(cell)
    close()
    nb.cells = cells
    return nb


def _exercise_items(chapter_nb) -> dict[int, str]:
    text = "\n".join(c.source for c in chapter_nb.cells if c.cell_type == "markdown")
    if "## Exercises" not in text:
        return {}
    section = re.split(r"\n## ", text.split("## Exercises", 1)[1], maxsplit=1)[0]
    section = section.split("\nSolutions:", 1)[0]
    items = re.split(r"^(\d+)\. ", section, flags=re.M)
    return {int(items[i]): re.sub(r"\n\s+", "\n", items[i + 1].strip()) for i in range(1, len(items) - 1, 2)}


# ---- build ----------------------------------------------------------------------------------------

def _git(*args, cwd=ROOT, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, **kw)


def export_tree(dest: pathlib.Path, source: str = "HEAD") -> None:
    """The tracked files at ``source`` (a git ref), or of the working tree (``source="worktree"``:
    tracked and untracked-but-not-ignored files as they are on disk) into ``dest``. No ``.git``."""
    if source == "worktree":
        listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout.decode("utf-8")
        for rel in sorted(set(filter(None, listed.split("\0")))):
            src = ROOT / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
        return
    archive = _git("archive", "--format=tar", source).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")


def _new_notebook_like(chapter_nb, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata = {k: v for k, v in chapter_nb.metadata.items() if k in ("kernelspec", "language_info")}
    nb.cells = cells
    return nb


def plain_exercises(chapter_nb, chapter_name: str) -> nbformat.NotebookNode:
    """An exercises notebook for a chapter whose solutions are not converted yet: the exercises, each
    with an empty markdown cell (derivations) and/or code cell (coding), and no checks (the instructor
    grades them from the solutions)."""
    items = _exercise_items(chapter_nb)
    params = [c for c in chapter_nb.cells if c.cell_type == "code" and "mode()" in c.source]
    heading = next((m.group(1) for c in chapter_nb.cells if c.cell_type == "markdown"
                    for m in [re.match(r"#\s+(.+)", c.source)] if m), chapter_name)
    cells = [nbformat.v4.new_markdown_cell(
        f"# Exercises: {heading}\n\nThe exercises of [the chapter](../{chapter_name}.ipynb), with room for your "
        "answers: code cells for coding, markdown cells for derivations. This chapter has no automatic checks "
        "yet: your instructor grades it by hand.")]
    if params:
        cells.append(nbformat.v4.new_code_cell(params[0].source))
    for number, text in items.items():
        kinds = re.match(r"\*\(([^)]*)\)\*", text)
        kinds = kinds.group(1) if kinds else "coding"
        cells.append(nbformat.v4.new_markdown_cell(f"**Exercise {number}.** {text}"))
        if re.search(r"derivation|proof", kinds):
            cells.append(nbformat.v4.new_markdown_cell("_Type your answer here._"))
        if "coding" in kinds or not re.search(r"derivation|proof", kinds):
            cells.append(nbformat.v4.new_code_cell("# your code"))
    return _new_notebook_like(chapter_nb, cells)


def _quiet():
    return contextlib.ExitStack() if os.environ.get("RELEASE_VERBOSE") else _redirect_all()


@contextlib.contextmanager
def _redirect_all():
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        try:
            yield sink
        except BaseException:
            sys.__stderr__.write(sink.getvalue()[-4000:])
            raise


def otter_assign(master: pathlib.Path, student_name: str, work: pathlib.Path) -> dict:
    """Run Otter Assign on ``master`` as if it were named ``student_name`` (the name Otter's init cell
    loads its checks from). Returns the student notebook, the autograder notebook and zip."""
    from otter.assign import main as assign

    src = work / "master" / student_name
    src.parent.mkdir(parents=True)
    shutil.copy(master, src)
    out = work / "dist"
    with _quiet():
        assign(str(src), str(out), no_pdfs=True, no_run_tests=True)
    zips = sorted((out / "autograder").glob("*-autograder_*.zip"))
    if len(zips) != 1:
        raise ReleaseError(f"otter assign made {len(zips)} autograder zips for {master.name}")
    return {"student": out / "student" / student_name, "autograder_nb": out / "autograder" / student_name,
            "zip": zips[0]}


def _clean(nb) -> None:
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)


def rubric_markdown(master_nb, title: str) -> str:
    lines = [f"# {title}: points and rubric", "",
             "Autograded questions are scored by `python tools/release.py grade` (Otter-Grader);",
             "manual ones (derivations) by hand, with the rubric below.", "",
             "| question | exercise | points | graded by |", "|---|---|---|---|"]
    qs = questions(master_nb)
    for q in qs:
        how = "hand (rubric below)" if q["manual"] else (
            f"{sum(not t['hidden'] for t in q['tests'])} public + {sum(t['hidden'] for t in q['tests'])} hidden tests")
        lines.append(f"| {q['name']} | {q['exercise']} | {q['points']} | {how} |")
    lines.append(f"| total | | {sum(q['points'] for q in qs)} | |")
    for q in (q for q in qs if q["manual"]):
        lines += ["", f"## {q['name']} ({q['points']} points)", "", *q["prompt"], "", "**Model answer.**", "",
                  *q["solution_md"]]
    return "\n".join(lines) + "\n"


POINTER = re.compile(r"Solutions: `chapters/solutions/(\d\d_\w+?)_solutions\.ipynb`\.?")
# Other sentences that mention the solutions folder, and their release wording (a space in a pattern
# matches any run of whitespace, so reflowed text still matches).
def _sentence(text: str) -> re.Pattern:
    return re.compile(r"\s+".join(re.escape(word) for word in text.split()))


REWRITES = [
    (_sentence("their solutions are in `chapters/solutions/` and are executed by the tests like every chapter."),
     "work them in `chapters/exercises/`: one notebook per chapter, with stubs and checks where the chapter has them."),
    (_sentence("the solutions are in `chapters/solutions/` and are executed by the tests like every chapter."),
     "work them in `chapters/exercises/`: one notebook per chapter, with stubs and checks where the chapter has them."),
    (_sentence("Solutions to each chapter's exercises are in `solutions/`; they are executed by the test suite like the chapters."),
     "Each chapter's exercises\nhave a notebook in `exercises/` (\"Homework\" below)."),
    (_sentence("and `solutions/` holds tested answers for the instructor."),
     "and `exercises/` has a notebook for each."),
    (_sentence("(chapters/solutions/ for exercise solutions)"), "(chapters/exercises/ for the exercises)"),
]


def _pointer(m: re.Match, converted: set) -> str:
    where = f"Exercises: `chapters/exercises/{m.group(1)}_exercises.ipynb`"
    if m.group(1) in converted:
        return where + " (stubs to complete; `grader.check(\"exN\")` runs an exercise's checks)."
    return where + " (a notebook to answer them in)."


def _rewrite_text(text: str, converted: set) -> str:
    text = POINTER.sub(lambda m: _pointer(m, converted), text)
    for pattern, new in REWRITES:
        text = pattern.sub(new, text)
    return INSTRUCTOR_ONLY.sub("", text)


def rewrite_release_text(dest: pathlib.Path, converted: set) -> None:
    """Point the chapters and READMEs at the exercise notebooks; fail on any other mention of the
    solutions folder (a new sentence needs a rule in ``REWRITES``)."""
    for path in sorted(dest.rglob("*")):
        if ".git" in path.parts or not path.is_file() or path.suffix not in TEXT_SUFFIXES:
            continue
        if path.suffix == ".ipynb":
            nb = nbformat.read(path, as_version=4)
            changed = False
            for cell in nb.cells:
                if cell.cell_type == "markdown":
                    new = _rewrite_text(cell.source, converted)
                    changed |= new != cell.source
                    cell.source = new
            if changed:
                nbformat.write(nb, path)
        elif path.suffix == ".md":
            text = path.read_text(encoding="utf-8")
            if _rewrite_text(text, converted) != text:
                path.write_text(_rewrite_text(text, converted), encoding="utf-8")
    left = []
    for path in sorted(dest.rglob("*")):
        if ".git" in path.parts or not path.is_file() or path.suffix not in (".md", ".ipynb"):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"solutions/|_solutions\.ipynb|instructor-only", line):
                left.append(f"{path.relative_to(dest)}:{n}: {line.strip()[:120]}")
    if left:
        raise ReleaseError("the release still mentions the solutions (add a rule to REWRITES in tools/release.py):\n"
                           + "\n".join(left))


# The assertion tests/test_notebooks.py had until main 9f78349, and what a release of such a version needs.
OLD_STRUCTURE_CHECK = ('    solutions = CHAPTERS / "solutions" / f"{path.stem}_solutions.ipynb"\n'
                       '    assert solutions.exists(), f"missing {solutions.name}"\n')
RELEASE_STRUCTURE_CHECK = (
    '    solutions = CHAPTERS / "solutions" / f"{path.stem}_solutions.ipynb"\n'
    '    exercises = CHAPTERS / "exercises" / f"{path.stem}_exercises.ipynb"  # the student release\n'
    '    assert solutions.exists() or exercises.exists(), f"missing {solutions.name} and {exercises.name}"\n')


def patch_structure_test(dest: pathlib.Path) -> bool:
    """Make an old ``test_chapter_structure`` (one that required the solutions unconditionally) accept
    the exercise notebooks instead; returns whether it patched. Newer versions skip the check without
    ``solutions/`` and are left alone; ``tests/test_release.py`` runs the release's copy either way."""
    path = dest / "tests" / "test_notebooks.py"
    if not path.exists():
        return False
    text = path.read_text(encoding="utf-8")
    if OLD_STRUCTURE_CHECK not in text:
        return False
    path.write_text(text.replace(OLD_STRUCTURE_CHECK, RELEASE_STRUCTURE_CHECK), encoding="utf-8")
    return True


EXERCISES_README = """# Exercises

One notebook per chapter: open it next to the chapter. Where the chapter's exercises have checks
(the notebook starts with "Initialize Otter"), complete the cells marked `...` and run the check
cell after each exercise (`grader.check("ex4")`): it runs the exercise's public checks and tells
you what is wrong. Your instructor grades with further, hidden checks, and grades the derivations
(markdown answers) by hand. `grader.check_all()` at the end runs every check. The other notebooks
have the exercise text and empty cells for your answers.

Keep the file name: the checks are stored in the notebook and found by its name. Submit the
notebook file (`.ipynb`) as your instructor asks.

The test suite (`pytest`) does not run these notebooks: half-finished work is expected here.
"""
EXERCISES_CONFTEST = '''"""Students' exercise notebooks are work in progress: pytest does not execute them."""
collect_ignore_glob = ["*.ipynb"]
'''

GRADING_README = """# Grading the homework (instructor only: do not give this folder to students)

One folder per chapter:

- `NN_*_solutions.ipynb`: the reference solutions, with Otter's check cells;
- `NN_*-autograder.zip`: Otter-Grader's autograder (public and hidden tests), for chapters whose
  exercises are converted;
- `rubric.md`: points per question, and the rubric for the derivations graded by hand.

Grade submissions (students' `chapters/exercises/NN_*_exercises.ipynb`) on this machine, without
Docker and without network, from the course repository:

    SAMLIB_MODE=quick python tools/release.py grade --grading THIS_FOLDER --chapter 03 submissions/*.ipynb --csv scores.csv

`--questions ex1_code,ex3_code` counts only those questions (a homework made of some of the
chapter's exercises). This runs `otter run` on each notebook (it executes the student's code: do it
in an environment you are willing to run their code in) and writes one row per submission with each
question's score. It executes the whole notebook, experiments included: `SAMLIB_MODE=quick` (as the
course's tests grade) keeps that to seconds per notebook; read the measurements of the hand-graded
questions in the submitted notebook itself. Manually graded questions appear in `rubric.md` only.
"""


def build(out: pathlib.Path, grading: pathlib.Path, source: str = "HEAD", commit: bool = True) -> dict:
    """Build the student release into ``out`` and the instructor's material into ``grading``."""
    out, grading = out.resolve(), grading.resolve()
    if out == grading or out in grading.parents or grading in out.parents:
        raise ReleaseError(f"--grading ({grading}) must be outside --out ({out}) and the other way round")
    for d in (out, grading):
        if d.exists() and any(d.iterdir()):
            raise ReleaseError(f"{d} is not empty: give a new folder")
        d.mkdir(parents=True, exist_ok=True)
    summary = {"converted": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        tree = tmp / "tree"
        tree.mkdir()
        export_tree(tree, source)
        shutil.copytree(tree, out, dirs_exist_ok=True)
        for rel in EXCLUDED:
            target = out / rel
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        for d in (out / "tools",):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        exercises = out / "chapters" / "exercises"
        exercises.mkdir(parents=True, exist_ok=True)
        (exercises / "README.md").write_text(EXERCISES_README, encoding="utf-8")
        (exercises / "conftest.py").write_text(EXERCISES_CONFTEST, encoding="utf-8")
        (grading / "README.md").write_text(GRADING_README, encoding="utf-8")
        for chapter in sorted((tree / "chapters").glob("[0-9][0-9]_*.ipynb")):
            stem = chapter.stem
            solution = tree / "chapters" / "solutions" / f"{stem}_solutions.ipynb"
            student_name = f"{stem}_exercises.ipynb"
            folder = grading / stem
            folder.mkdir()
            chapter_nb = nbformat.read(chapter, as_version=4)
            master = nbformat.read(solution, as_version=4) if solution.exists() else None
            if master is not None and is_master(master):
                problems = check_master(solution, chapter)
                if problems:
                    raise ReleaseError("\n".join(problems))
                made = otter_assign(solution, student_name, tmp / stem)
                student = nbformat.read(made["student"], as_version=4)
                reference = nbformat.read(made["autograder_nb"], as_version=4)
                for nb in (student, reference):
                    _clean(nb)
                nbformat.write(student, exercises / student_name)
                nbformat.write(reference, folder / f"{stem}_solutions.ipynb")
                shutil.copy(made["zip"], folder / f"{stem}-autograder.zip")
                (folder / "rubric.md").write_text(rubric_markdown(master, stem), encoding="utf-8")
                summary["converted"].append(stem)
            else:
                nbformat.write(plain_exercises(chapter_nb, stem), exercises / student_name)
                if master is not None:
                    shutil.copy(solution, folder / solution.name)
                (folder / "rubric.md").write_text(
                    f"# {stem}\n\nNot converted to the assignment format yet: grade from `{solution.name}` "
                    "by hand.\n", encoding="utf-8")
                summary["plain"].append(stem)
        rewrite_release_text(out, set(summary["converted"]))
        summary["patched_structure_test"] = patch_structure_test(out)
    if commit:
        env = {**os.environ, "GIT_AUTHOR_NAME": "course release", "GIT_AUTHOR_EMAIL": "release@localhost",
               "GIT_COMMITTER_NAME": "course release", "GIT_COMMITTER_EMAIL": "release@localhost"}
        _git("init", "-q", "-b", "main", cwd=out)
        _git("add", "-A", cwd=out)
        _git("-c", "commit.gpgsign=false", "commit", "-q", "--no-verify", "-m", "Course release for students",
             cwd=out, env=env)
    return summary


# ---- grade ----------------------------------------------------------------------------------------

def grade(grading: pathlib.Path, chapter: str, submissions: list[pathlib.Path],
          questions: list[str] | None = None) -> list[dict]:
    """Score each submission with the chapter's autograder (``otter run``); one dict per submission:
    file, total, possible and each autograded question's score. With ``questions`` (names such as
    ``ex1_code``: a homework that uses some of the chapter's exercises) only those count."""
    from otter.run import main as otter_run

    folders = sorted(grading.glob(f"{chapter}_*"))
    zips = [z for f in folders for z in f.glob("*-autograder.zip")]
    if len(zips) != 1:
        raise ReleaseError(f"no single autograder for chapter {chapter} in {grading} (found {zips}); "
                           "was the chapter converted?")
    if questions is not None:
        with zipfile.ZipFile(zips[0]) as z:
            known = {pathlib.PurePosixPath(n).stem for n in z.namelist() if re.fullmatch(r"tests/[^/]+\.py", n)}
        if not questions or set(questions) - known:
            raise ReleaseError(f"chapter {chapter} has no autograded questions {sorted(set(questions) - known)} "
                               f"(it has {sorted(known)}; the hand-graded ones are in rubric.md)")
    rows = []
    for sub in submissions:
        with tempfile.TemporaryDirectory() as tmp, _quiet():
            # otter run grades a notebook under the name its checks are stored under
            named = pathlib.Path(tmp) / f"{folders[0].name}_exercises.ipynb"
            shutil.copy(sub, named)
            results = otter_run(str(named), autograder=str(zips[0]), output_dir=None, no_logo=True)
        kept = {name: r for name, r in results.results.items() if questions is None or name in questions}
        row = {"file": str(sub), "total": sum(r.score for r in kept.values()),
               "possible": sum(r.possible for r in kept.values())}
        row.update({name: r.score for name, r in kept.items()})
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/release.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the student release and the instructor's graders")
    b.add_argument("--out", required=True, type=pathlib.Path, help="new folder for the student release")
    b.add_argument("--grading", type=pathlib.Path, help="new folder for solutions and graders (default: OUT-grading)")
    b.add_argument("--source", default="HEAD", help="git ref to release, or 'worktree' (default: HEAD)")
    g = sub.add_parser("grade", help="grade submissions with a chapter's autograder")
    g.add_argument("--grading", required=True, type=pathlib.Path)
    g.add_argument("--chapter", required=True, help="two digits, e.g. 03")
    g.add_argument("--csv", type=pathlib.Path, help="write the scores here")
    g.add_argument("--questions", help="comma-separated autograded questions to count (default: all), e.g. ex1_code,ex3_code")
    g.add_argument("submissions", nargs="+", type=pathlib.Path)
    for name, help_ in (("check", "lint a converted solutions notebook"),
                        ("scaffold", "wrap a solutions notebook's exercises into Otter questions (in place)")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("notebooks", nargs="+", type=pathlib.Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            grading = args.grading or args.out.with_name(args.out.name + "-grading")
            summary = build(args.out, grading, args.source)
            print(f"student release: {args.out} (one commit, no solutions)\ninstructor: {grading}\n"
                  f"exercises with checks: {', '.join(summary['converted']) or 'none'}\n"
                  f"exercises without checks yet: {', '.join(summary['plain']) or 'none'}")
        elif args.command == "grade":
            wanted = [q.strip() for q in args.questions.split(",") if q.strip()] if args.questions else None
            rows = grade(args.grading, args.chapter, args.submissions, wanted)
            for row in rows:
                print(f"{row['file']}: {row['total']:g} / {row['possible']:g}")
            if args.csv:
                keys = list(dict.fromkeys(k for row in rows for k in row))
                with open(args.csv, "w", encoding="utf-8", newline="") as f:
                    writer = csv.DictWriter(f, keys)
                    writer.writeheader()
                    writer.writerows(rows)
        elif args.command == "check":
            problems = []
            for nb in args.notebooks:
                chapter = nb.resolve().parents[1] / nb.name.replace("_solutions", "")
                problems += check_master(nb, chapter if chapter.exists() else None)
            print("\n".join(problems) or "ok")
            return 1 if problems else 0
        elif args.command == "scaffold":
            for nb in args.notebooks:
                chapter = nb.resolve().parents[1] / nb.name.replace("_solutions", "")
                nbformat.write(scaffold(nb, chapter), nb)
                print(f"{nb}: scaffolded. Next steps: the docstring of scaffold() in tools/release.py, and "
                      "chapters/README.md, \"Homework\"; then `python tools/release.py check` on it.")
    except ReleaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
