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
        # through the dataclass: a field added after the records were written takes its default
        assert E.DataSpec(**r["data"]) == E.run_data(grid, r["config"]["seed"]), r["run_id"]


def test_chapter_reports_the_tables_the_records_give(results):
    name, _, records = results
    summary = E.summarize(None, records, write=False)
    expected = (E.format_table(summary["selected"]) + "\n" + E.format_paired(summary["paired"])).strip()
    if name == "08_segmentation":  # chapter 08 reports its own tables (garment-only mIoU, memorization vs chance)
        from samlib.experiments.catalog import format_segmentation_report, segmentation_report
        expected = format_segmentation_report(segmentation_report(records)).strip()
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


SEGMENTATION = E.COURSE_RESULTS / "08_segmentation"


def test_segmentation_records_hold_what_chapter_08_analyses(monkeypatch):
    monkeypatch.setenv("SAMLIB_MODE", "standard")
    grid = E.segmentation_grid()
    assert grid.data.data_seed is None and grid.data.scene_labels == "superclasses" and grid.data.scene_balance
    for r in E.load_records(SEGMENTATION):
        assert r["data"]["data_seed"] == r["config"]["seed"]          # every seed draws its own scenes and noise
        assert r["num_classes"] == 6
        evaluated = [h for h in r["history"] if "test_garment_miou" in h]
        assert [h["epoch"] for h in evaluated] == list(range(3, 31, 3)), r["run_id"]
        for h in evaluated:
            assert len(h["test_class_iou"]) == 6 and h["val_garment_miou"] is not None, r["run_id"]
            if r["noise_rate"] > 0:
                assert abs(h["memorized"] - h["memorized_chance"] - h["memorized_excess"]) < 1e-12
        assert "top_hessian_eig" in r["final"], r["run_id"]


def test_segmentation_selection_is_on_validation_and_pairs_by_seed():
    from samlib.experiments.catalog import segmentation_report
    from samlib.train import TrainConfig
    records = E.load_records(SEGMENTATION)
    report = segmentation_report(records)
    for row in report["selected"]:
        rivals = [r for r in report["rows"] if (r["noise_rate"], r["method"]) == (row["noise_rate"], row["method"])]
        assert row["val_garment_miou"][0] == max(r["val_garment_miou"][0] for r in rivals)
        assert len(rivals) == (1 if row["method"] == "SGD" else 3)
    by_id = {r["run_id"]: r for r in records}
    for p in report["paired"]:   # recompute one paired difference from the records, seed by seed
        chosen = {row["method"]: row["hparams"] for row in report["selected"] if row["noise_rate"] == p["noise_rate"]}
        grid_like = {m: TrainConfig(method=m, hparams=chosen[m]) for m in (p["a"], p["b"])}
        for seed, diff in zip(p["seeds"], p["diffs"]):
            a, b = (by_id[E.run_id(p["noise_rate"], dataclasses.replace(grid_like[m], seed=seed))]["final"][p["metric"]]
                    for m in (p["a"], p["b"]))
            assert diff == a - b
        assert p["seeds"] == [0, 1, 2]


def test_demo_uses_chapter_07s_validation_choice(monkeypatch):
    monkeypatch.setenv("SAMLIB_MODE", "standard")
    summary = E.summarize(None, E.load_records(E.COURSE_RESULTS / "07_classification"), write=False)
    demo = E.demo_grid()
    for method in ("SAM", "InfoSAM"):
        chosen = next(r for r in summary["selected"] if r["noise_rate"] == demo.noise_rates[0] and r["method"] == method)
        assert demo.methods[method] == {k: [v] for k, v in chosen["hparams"].items()}
    assert demo.data == E.classification_grid().data and demo.train == E.classification_grid().train
