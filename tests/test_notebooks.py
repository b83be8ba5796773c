"""Notebooks are committed clean, and every chapter has its solutions notebook and required parts."""
import json
import pathlib
import re

import pytest

CHAPTERS = pathlib.Path(__file__).resolve().parents[1] / "chapters"
NOTEBOOKS = sorted(p for p in CHAPTERS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
MAIN = [p for p in NOTEBOOKS if p.parent == CHAPTERS]


def test_there_are_chapters():
    assert {p.name[:2] for p in MAIN} >= {"00", "01", "02", "03", "04", "05", "06", "07", "08", "09"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(CHAPTERS)))
def test_notebook_is_clean(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, f"{path.name} has outputs"
    assert "widgets" not in nb.get("metadata", {}), f"{path.name} carries saved widget state"


@pytest.mark.parametrize("path", MAIN, ids=lambda p: p.name)
def test_chapter_structure(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    text = "\n".join("".join(c["source"]) for c in nb["cells"])
    for part in ("Learning objectives", "Prerequisites", "Runtime", "## Summary", "## Exercises"):
        assert part in text, f"{path.name} lacks '{part}'"
    assert re.search(r"\bquick\b.*\bstandard\b.*\bfull\b", text), f"{path.name} lacks runtimes per mode"
    params = [c for c in nb["cells"] if c["cell_type"] == "code" and "mode()" in "".join(c["source"])]
    assert len(params) == 1, f"{path.name} must have exactly one parameters cell reading SAMLIB_MODE"
    exercises = text.split("## Exercises", 1)[1]
    assert 3 <= len(re.findall(r"^\d+\. ", exercises, re.M)) <= 6
    solutions = CHAPTERS / "solutions" / f"{path.stem}_solutions.ipynb"
    assert solutions.exists(), f"missing {solutions.name}"


@pytest.mark.parametrize("path", MAIN, ids=lambda p: p.name)
def test_derivations_are_checked_by_assertions(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    if path.name.startswith("00"):
        assert "assert" in code
    else:
        assert code.count("assert") >= 3, f"{path.name}: derivations need numerical checks that assert"
