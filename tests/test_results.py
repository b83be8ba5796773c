"""The committed records of chapters 07-08: complete, produced by the documented grid, and what the chapters report."""
import dataclasses
import json
import pathlib
import re

import pytest

from samlib import experiments as E

CHAPTERS = pathlib.Path(__file__).resolve().parents[1] / "chapters"
RESULTS = {"07_classification": E.classification_grid, "08_segmentation": E.segmentation_grid}


def _markdown(notebook: pathlib.Path) -> str:
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


@pytest.fixture(params=sorted(RESULTS))
def results(request, monkeypatch):
    monkeypatch.setenv("SAMLIB_MODE", "standard")
    name = request.param
    records = E.load_records(E.COURSE_RESULTS / name)
    return name, RESULTS[name](), records


def test_records_are_the_complete_standard_grid(results):
    name, grid, records = results
    expected = {E.run_id(rate, config): config for rate, config in grid.runs()}
    assert sorted(r["run_id"] for r in records) == sorted(expected), f"{name}: records do not match the grid"
    for r in records:
        config = dataclasses.asdict(expected[r["run_id"]])
        config["task"] = r["config"]["task"]
        recorded = {k: v for k, v in r["config"].items() if k in config}
        assert json.loads(json.dumps(config)) == recorded, r["run_id"]
        assert r["data"] == dataclasses.asdict(grid.data), r["run_id"]


def test_chapter_reports_the_tables_the_records_give(results):
    name, _, records = results
    summary = E.summarize(None, records, write=False)
    expected = (E.format_table(summary["selected"]) + "\n" + E.format_paired(summary["paired"])).strip()
    text = _markdown(CHAPTERS / f"{name}.ipynb")
    found = re.search(rf"<!-- results:{name} -->\n(.*?)\n<!-- /results:{name} -->", text, re.S)
    assert found, f"{name}.ipynb lacks its results block"
    assert found.group(1).strip() == expected, f"{name}.ipynb reports tables that its records do not give"
    committed = (E.COURSE_RESULTS / name / "summary.md").read_text(encoding="utf-8")
    assert committed == E.format_summary(summary), f"{name}/summary.md is stale: rerun `summarize`"


def test_saved_models_exist_for_the_segmentation_figure(monkeypatch):
    monkeypatch.setenv("SAMLIB_MODE", "standard")
    grid = E.segmentation_grid()
    for rate, config in grid.runs():
        if config.seed in grid.save_models:
            assert (E.COURSE_RESULTS / "08_segmentation" / "models" / f"{E.run_id(rate, config)}.pt").exists()


def test_demo_uses_chapter_07s_validation_choice(monkeypatch):
    monkeypatch.setenv("SAMLIB_MODE", "standard")
    summary = E.summarize(None, E.load_records(E.COURSE_RESULTS / "07_classification"), write=False)
    demo = E.demo_grid()
    for method in ("SAM", "InfoSAM"):
        chosen = next(r for r in summary["selected"] if r["noise_rate"] == demo.noise_rates[0] and r["method"] == method)
        assert demo.methods[method] == {k: [v] for k, v in chosen["hparams"].items()}
    assert demo.data == E.classification_grid().data and demo.train == E.classification_grid().train
