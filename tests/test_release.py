"""The student release and the homework graders (issue 15), built as ``tools/release.py`` builds them.

One build (module-scoped) of the working tree into a temporary folder, then:

- the release holds no solutions (no folder, no solution code, no hidden test, one commit and no
  older history), points the chapters at their exercise notebooks, and its own fast tests pass in a
  subprocess without the solutions;
- for every chapter converted to Otter's assignment format, Otter-Grader's ``otter run`` gives the
  reference solutions full marks and the blank student notebook none;
- the typical wrong answers in ``tests/fixtures/homework/NN_*.yml`` each lose points on their question,
  while the questions left correct keep theirs (so a failure is the wrong answer's, not the harness's).

CPU time (quick mode, one thread): about 2.5 minutes for six converted chapters, most of it Otter's
notebook kernels and the wrong-answer rounds (each runs a notebook's autograded cells again).
"""
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from unittest import mock

import pytest
import torch

nbformat = pytest.importorskip("nbformat")
yaml = pytest.importorskip("yaml")
pytest.importorskip("otter", reason="the graders need Otter-Grader (pip install -e \".[dev]\")")

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "homework"
SOLUTIONS = ROOT / "chapters" / "solutions"
if not (ROOT / ".git").exists() or shutil.which("git") is None:
    pytest.skip("the release is built from a git checkout", allow_module_level=True)

spec = importlib.util.spec_from_file_location("release", ROOT / "tools" / "release.py")
release = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release)

CONVERTED = sorted(p for p in SOLUTIONS.glob("*_solutions.ipynb")
                   if release.is_master(nbformat.read(p, as_version=4)))


def _stem(master: pathlib.Path) -> str:
    return master.name.replace("_solutions.ipynb", "")


@pytest.fixture(scope="module")
def built():
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="release-test-"))
    out, grading = tmp / "student", tmp / "grading"
    summary = release.build(out, grading, source="worktree")
    yield {"out": out, "grading": grading, "summary": summary}
    shutil.rmtree(tmp, ignore_errors=True)


def _child_env(root: pathlib.Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(SAMLIB_MODE="quick", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    return env


# ---- the format ---------------------------------------------------------------------------------

def test_some_chapters_are_converted():
    assert {_stem(p)[:2] for p in CONVERTED} >= {"00", "01", "02", "03", "04", "09"}


@pytest.mark.parametrize("master", CONVERTED, ids=_stem)
def test_converted_notebooks_pass_the_format_check(master):
    assert release.check_master(master, ROOT / "chapters" / f"{_stem(master)}.ipynb") == []


@pytest.mark.parametrize("master", CONVERTED, ids=_stem)
def test_every_converted_chapter_has_wrong_answer_fixtures(master):
    wrong = yaml.safe_load((FIXTURES / f"{_stem(master)}.yml").read_text(encoding="utf-8"))
    auto = {q["name"] for q in release.questions(nbformat.read(master, as_version=4)) if not q["manual"]}
    assert {w["question"] for w in wrong} == auto, "every autograded question needs typical wrong answers"


def test_the_format_check_finds_what_it_looks_for(tmp_path):
    master = nbformat.read(CONVERTED[0], as_version=4)
    for cell in master.cells:
        if cell.cell_type == "code" and "# BEGIN TEST CONFIG" in cell.source:
            cell.source = cell.source.replace("hidden: true", "hidden: false")
            break
    master.cells.append(nbformat.v4.new_raw_cell("# BEGIN QUESTION\nname: extra\npoints: 1"))
    master.cells.append(nbformat.v4.new_raw_cell("# END QUESTION"))
    path = tmp_path / CONVERTED[0].name
    nbformat.write(master, path)
    problems = "\n".join(release.check_master(path))
    assert "needs at least one hidden test" in problems and "question extra: name it exN" in problems


# ---- the student release ------------------------------------------------------------------------

def test_release_has_no_solutions_and_no_history(built):
    out = built["out"]
    assert not (out / "chapters" / "solutions").exists()
    assert not (out / "tests" / "fixtures" / "homework").exists() and not (out / "tools" / "release.py").exists()
    commits = subprocess.run(["git", "rev-list", "--all"], cwd=out, capture_output=True, check=True,
                             encoding="utf-8").stdout.split()
    assert len(commits) == 1, "the release must be one commit with no older history"
    status = subprocess.run(["git", "status", "--porcelain"], cwd=out, capture_output=True, check=True,
                            encoding="utf-8").stdout
    assert status == "", f"files left out of the release's commit:\n{status}"
    grading = built["grading"].resolve()
    assert out.resolve() not in grading.parents and grading not in out.resolve().parents
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in out.rglob("*")
             if p.is_file() and ".git" not in p.relative_to(out).parts]
    corpus = "\n".join(texts)
    for master in CONVERTED:
        nb = nbformat.read(master, as_version=4)
        given = {ln for c in nb.cells for ln in _lines(c.source, solution=False)}
        student = nbformat.read(out / "chapters" / "exercises" / master.name.replace("_solutions", "_exercises"),
                                as_version=4)
        student_lines = {ln.strip() for c in student.cells for ln in c.source.splitlines()}
        for q in release.questions(nb):
            for line in _solution_lines(q):
                assert line in given or line not in student_lines, f"{master.name} {q['name']}: solution line in the release: {line}"
            for test in (t for t in q["tests"] if t["hidden"]):
                body = [ln.strip() for ln in test["source"].splitlines() if ln.strip().startswith("assert")]
                assert not any(json.dumps(ln)[1:-1] in corpus or ln in corpus for ln in body), \
                    f"{master.name} {q['name']}: a hidden test is in the release"


def _lines(source: str, solution: bool) -> list[str]:
    """A cell's stripped lines inside BEGIN/END SOLUTION or marked # SOLUTION (``solution=True``), or the
    others (``False``)."""
    lines, inside = [], False
    for line in source.splitlines():
        s = line.strip()
        if s.startswith("# BEGIN SOLUTION"):
            inside = True
        elif s.startswith("# END SOLUTION"):
            inside = False
        elif (inside or s.endswith("# SOLUTION")) == solution:
            lines.append(s.removesuffix("# SOLUTION").strip())
    return lines


def _solution_lines(question) -> list[str]:
    """The distinctive lines a student must write (inside BEGIN/END SOLUTION or marked # SOLUTION)."""
    return [s for source in question["solution_code"] for s in _lines(source, solution=True) if len(s) >= 20]


def test_release_chapters_point_to_exercise_notebooks(built):
    out = built["out"]
    for chapter in sorted((out / "chapters").glob("[0-9][0-9]_*.ipynb")):
        text = "\n".join(c.source for c in nbformat.read(chapter, as_version=4).cells)
        assert "solutions/" not in text
        pointer = f"chapters/exercises/{chapter.stem}_exercises.ipynb"
        if "Exercises: `chapters/exercises/" in text:
            assert pointer in text
        assert (out / pointer).exists()
    converted = {_stem(p) for p in CONVERTED}
    assert set(built["summary"]["converted"]) == converted
    for stem in converted:
        student = nbformat.read(out / "chapters" / "exercises" / f"{stem}_exercises.ipynb", as_version=4)
        source = "\n".join(c.source for c in student.cells)
        assert f'otter.Notebook("{stem}_exercises.ipynb")' in source and 'grader.check("' in source
        assert "BEGIN SOLUTION" not in source and "# SOLUTION" not in source
        assert all(not t.get("hidden") for q in student.metadata["otter"]["tests"].values()
                   for s in q["suites"] for t in s["cases"])


def test_release_tests_pass_without_solutions(built):
    """A fast subset of the release's own suite, run there: notebook structure (chapter_structure needs
    the exercise notebooks now), packaging and the static encoding check. ``chapters/exercises`` is on
    the command line too: its stubs would fail if pytest executed them, and it must not."""
    out = built["out"]
    fast = ["tests/test_notebooks.py", "tests/test_packaging.py",
            "tests/test_encoding.py::test_every_text_read_and_write_names_its_encoding", "chapters/exercises"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", *fast], cwd=out,
                          env=_child_env(out), capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", done.stdout) and "failed" not in done.stdout
    assert "test_chapter_structure[03_presam.ipynb]" in done.stdout and "_exercises.ipynb::" not in done.stdout


# ---- the graders --------------------------------------------------------------------------------

@pytest.mark.parametrize("master", CONVERTED, ids=_stem)
def test_grader_gives_reference_full_marks_and_stubs_none(built, master):
    stem = _stem(master)
    folder = built["grading"] / stem
    assert (folder / "rubric.md").read_text(encoding="utf-8").count("**Rubric**") == sum(
        q["manual"] for q in release.questions(nbformat.read(master, as_version=4)))
    stub = built["out"] / "chapters" / "exercises" / f"{stem}_exercises.ipynb"
    reference, blank = release.grade(built["grading"], stem[:2], [folder / f"{stem}_solutions.ipynb", stub])
    questions = [k for k in reference if k not in ("file", "total", "possible")]
    assert questions and reference["total"] == reference["possible"] > 0, reference
    assert all(blank[q] == 0 for q in questions), blank


def test_grade_refuses_questions_the_autograder_does_not_have(built):
    stem = _stem(CONVERTED[0])
    manual = next(q["name"] for q in release.questions(nbformat.read(CONVERTED[0], as_version=4)) if q["manual"])
    for wrong in (["ex99"], [manual]):      # a typo, and a question graded by hand (its points are in rubric.md)
        with pytest.raises(release.ReleaseError, match="no autograded questions"):
            release.grade(built["grading"], stem[:2], [], questions=wrong)


def _run_cells(cells: list[str]) -> dict:
    """Execute notebook code cells in one namespace, each on its own as Jupyter does (an error stops
    that cell only). Returns the namespace."""
    import matplotlib

    matplotlib.use("Agg")
    env = {"__name__": "__main__"}
    for source in cells:
        try:
            exec(compile(source, "<cell>", "exec"), env)
        except Exception:  # noqa: BLE001 - a wrong answer may raise; its tests then fail
            pass
    return env


def _master_cells(nb):
    """(question name or None, source) of every code cell outside test blocks and outside questions
    graded by hand (measurements such as timings and training runs: they have no tests to run)."""
    out, question, manual, block = [], None, False, None
    for cell in nb.cells:
        b = release._boundary(cell)
        if b == "BEGIN QUESTION":
            config = release._raw_config(cell)
            question, manual = config["name"], bool(config.get("manual"))
        elif b == "END QUESTION":
            question, manual = None, False
        elif b in ("BEGIN TESTS", "END TESTS"):
            block = "tests" if b.startswith("BEGIN") else None
        elif cell.cell_type == "code" and block != "tests" and not manual:
            out.append((question, cell.source))
    return out


@pytest.mark.parametrize("master", CONVERTED, ids=_stem)
def test_grader_fails_typical_wrong_answers(built, master, tmp_path):
    """Round k applies the k-th wrong answer of every question at once, runs the notebook in-process and
    Otter's tests of every question from the autograder zip: each mutated question must lose points and
    every other one keep full marks."""
    from otter.test_files import OKTestFile

    stem = _stem(master)
    with zipfile.ZipFile(built["grading"] / stem / f"{stem}-autograder.zip") as z:
        z.extractall(tmp_path)
    tests = {p.stem: p for p in (tmp_path / "tests").glob("*.py")}
    wrong = yaml.safe_load((FIXTURES / f"{stem}.yml").read_text(encoding="utf-8"))
    by_question: dict = {}
    for w in wrong:
        by_question.setdefault(w["question"], []).append(w)
    cells = _master_cells(nbformat.read(master, as_version=4))
    rounds = max(len(v) for v in by_question.values())
    for k in range(rounds):
        mutated, sources = {}, []
        for question, source in cells:
            options = by_question.get(question, [])
            w = options[k] if k < len(options) else None
            if w is not None:
                joined = "\n".join(s for q, s in cells if q == question)
                assert joined.count(w["old"]) == 1, f"{stem} {question}: '{w['old']}' must occur once"
                if w["old"] in source:
                    source = source.replace(w["old"], w["new"])
                    mutated[question] = w["why"]
            sources.append(source)
        cwd = os.getcwd()
        os.chdir(tmp_path)
        # the notebook seeds torch, and a wrong answer may leave SAMLIB_MODE changed: keep the suite's as they were
        try:
            with torch.random.fork_rng(devices=[]), mock.patch.dict(os.environ):
                env = _run_cells(sources)
                for name, path in tests.items():
                    result = OKTestFile.from_file(str(path))
                    result.run(env)
                    if name in mutated:
                        assert not result.passed_all, f"{stem} {name}: the grader accepts a wrong answer ({mutated[name]})"
                    else:
                        assert result.passed_all, f"{stem} {name} fails although it was left correct (round {k})"
        finally:
            os.chdir(cwd)
