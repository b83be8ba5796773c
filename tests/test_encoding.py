"""Text files are UTF-8 on every platform: every text read and write names its encoding.

Windows' default locale encoding is cp1252, which has no "−" (U+2212, in every paired-differences
table) and decodes notebooks ("ρ") to garbage or fails. The same failure is reproduced here with an
ASCII locale (``LC_ALL=C PYTHONUTF8=0 PYTHONCOERCECLOCALE=0``), and ``PYTHONWARNDEFAULTENCODING=1``
(``-X warn_default_encoding``) turns every text I/O without an explicit encoding into an
``EncodingWarning``, raised as an error for samlib's code, the CLI and the tests.
"""
import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = [*sorted((ROOT / "samlib").rglob("*.py")), *sorted((ROOT / "tests").rglob("*.py")),
           *sorted((ROOT / "data").glob("*.py")), ROOT / "conftest.py"]
NOTEBOOKS = sorted(p for p in (ROOT / "chapters").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
TEXT_MODE_SUBPROCESS = ("run", "check_output", "check_call", "call", "Popen")


def _mode(call: ast.Call, position: int):
    node = call.args[position] if len(call.args) > position else next(
        (k.value for k in call.keywords if k.arg == "mode"), None)
    return node.value if isinstance(node, ast.Constant) else None


def _unnamed_encodings(tree: ast.AST):
    """Calls that read or write text in the locale's encoding (no ``encoding=``), as (line, text)."""
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        keywords = {k.arg: k.value for k in call.keywords}
        if "encoding" in keywords:
            continue
        f = call.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        owner = getattr(f.value, "id", None) if isinstance(f, ast.Attribute) else None
        text_flag = any(isinstance(keywords.get(k), ast.Constant) and keywords[k].value
                        for k in ("text", "universal_newlines"))
        if (name in ("read_text", "write_text", "TextIOWrapper", "savetxt", "loadtxt", "genfromtxt")
                or (name == "open" and owner in (None, "io") and "b" not in (_mode(call, 1) or "r"))
                or (name in ("NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile")
                    and "b" not in (_mode(call, 0) or "w+b"))
                or (owner == "subprocess" and name in TEXT_MODE_SUBPROCESS and text_flag)):
            yield call.lineno, ast.unparse(call)[:120]


def _cell_code(source: str) -> str:
    """A code cell as Python: IPython magics and shell escapes become plain statements."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:
        return "\n".join("pass" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    return TransformerManager().transform_cell(source)


def test_every_text_read_and_write_names_its_encoding():
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [f"{path.relative_to(ROOT)}:{line}: {code}" for line, code in _unnamed_encodings(tree)]
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for i, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
            tree = ast.parse(_cell_code("".join(cell["source"])))
            found += [f"{path.relative_to(ROOT)} code cell {i}, line {line}: {code}"
                      for line, code in _unnamed_encodings(tree)]
    assert not found, "text I/O in the locale's encoding (add encoding=\"utf-8\"):\n" + "\n".join(found)


def test_the_check_finds_what_it_looks_for():
    code = ("p.read_text()\nopen(f)\nopen(f, 'w')\nsubprocess.run(c, text=True)\nio.TextIOWrapper(b)\n"
            "p.write_text(s, encoding='utf-8')\nopen(f, 'rb')\nsubprocess.run(c, capture_output=True)\n"
            "tarfile.open(f, 'r:gz')\nsubprocess.run(c, text=True, encoding='utf-8')\n")
    assert [line for line, _ in _unnamed_encodings(ast.parse(code))] == [1, 2, 3, 4, 5]


def _ascii_locale_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONIOENCODING", "PYTHONUTF8"))}
    env.update(LANG="C", LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0", PYTHONWARNDEFAULTENCODING="1",
               SAMLIB_MODE="quick", OMP_NUM_THREADS="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return env


# Runs in a fresh interpreter under the ASCII locale: the grid CLI, the run CLI with a UTF-8 grid
# file, summarize, the README demo (quick mode) and reading a record that holds raw UTF-8.
CHILD = r'''
import json, locale, pathlib, runpy, sys, warnings
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # getpreferredencoding itself warns under -X warn_default_encoding
    print("locale encoding:", locale.getpreferredencoding(False), file=sys.stderr)
warnings.filterwarnings("error", category=EncodingWarning, module=r"(samlib(\..*)?|__main__)$")
out = pathlib.Path(sys.argv[1])

def cli(*args):
    sys.argv = ["python -m samlib.experiments", *map(str, args)]
    runpy.run_module("samlib.experiments", run_name="__main__", alter_sys=True)

tiny = ["--n-train", "96", "--epochs", "1", "--batch-size", "32", "--device", "cpu"]
cli("grid", "--methods", "SGD", "SAM:rho=0.05", "--seeds", "0", *tiny, "--out", out / "grid")
cli("summarize", out / "grid")
grid = json.loads((out / "grid" / "grid.json").read_bytes())
grid.update(name="démo ρ − ±", methods={"SAM": {"rho": [0.1]}})
(out / "grid.json").write_bytes(json.dumps(grid, ensure_ascii=False).encode("utf-8"))
cli("run", out / "grid.json", "--out", out / "run")
cli("demo", "--out", out / "demo")

from samlib import experiments as E
record = E.load_records(out / "run")[0]
record["note"] = "ρ − ±"
(out / "run" / "records" / "extra.json").write_bytes(json.dumps(record, ensure_ascii=False).encode("utf-8"))
assert sorted(str(r.get("note")) for r in E.load_records(out / "run")) == ["None", "ρ − ±"]
'''


def test_cli_and_records_work_under_an_ascii_locale(tmp_path):
    script = tmp_path / "child.py"  # a file, not -c: the ASCII locale cannot decode a non-ASCII command line
    script.write_text(CHILD, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=_ascii_locale_env(),
                          capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    if sys.platform.startswith("linux"):
        assert "locale encoding: ANSI_X3.4-1968" in done.stderr  # else this test would prove nothing
    assert "SAM − SGD" in (tmp_path / "grid" / "summary.md").read_text(encoding="utf-8")
    assert "SAM − SGD" in done.stdout and "±" in done.stdout  # printed, not crashed
    assert json.loads((tmp_path / "run" / "grid.json").read_text(encoding="utf-8"))["name"] == "démo ρ − ±"
    for name in ("grid", "run", "demo"):
        assert (tmp_path / name / "curves.png").exists()


def test_tests_read_notebooks_and_records_under_an_ascii_locale():
    files = ["tests/test_notebooks.py", "tests/test_results.py", "tests/test_packaging.py"]
    ours = r"error::EncodingWarning:(test_\w*|conftest|samlib(\..*)?)$"  # third-party code is not ours to fix
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", f"filterwarnings={ours}",
                           *files], cwd=ROOT, env=_ascii_locale_env(), capture_output=True, encoding="utf-8",
                          errors="replace", timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
