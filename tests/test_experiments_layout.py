"""samlib.experiments as a package: one concern per module, one-way imports, a torch-free statistics path,
today's public names, per-task selection, and models rebuilt from what their records store."""
import ast
import pathlib
import subprocess
import sys

import pytest
import torch

from samlib import experiments as E
from samlib.experiments import stats
from samlib.models import build_model
from samlib.train import METHODS

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "samlib" / "experiments"
# A module may import only modules of a lower level: dependencies point one way.
LEVEL = {"stats": 0, "spec": 0, "compare": 0, "report": 1, "grid": 1, "runner": 2, "catalog": 2, "__main__": 3}

# Every name callers use today (chapters, tests, README), plus the public helpers the review listed.
USED = {"DataSpec", "Grid", "prepare_data", "run_grid", "summarize", "load_records", "run_id", "cifar_preset",
        "PRESETS", "main", "mean_curve", "load_model", "selected_records", "format_table", "format_summary",
        "COURSE_RESULTS", "classification_grid", "segmentation_grid", "COURSE_GRIDS", "paired_differences",
        "format_paired", "T975", "mean_std", "demo_grid", "plot_summary"}


def test_every_public_name_is_exported_and_resolves():
    assert USED <= set(E.__all__)
    for name in E.__all__:
        assert getattr(E, name) is not None, name
    assert USED <= set(dir(E))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        E.nope  # noqa: B018
    namespace: dict = {}
    exec("from samlib.experiments import *", namespace)
    assert USED <= set(namespace)


def test_modules_import_one_way():
    assert {p.stem for p in PACKAGE.glob("*.py")} == set(LEVEL) | {"__init__"}
    for module, level in LEVEL.items():
        tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
        siblings = {node.module for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
        assert siblings <= set(LEVEL), (module, siblings)
        for other in siblings:
            assert LEVEL[other] < level, f"{module} imports {other}: dependencies must point one way"


def test_statistics_and_reports_import_no_torch():
    code = ("import sys, pathlib\n"
            "from samlib.experiments import load_records, summarize, format_summary, paired_differences, T975\n"
            "from samlib.experiments import stats, report\n"
            "records = load_records(pathlib.Path('chapters/results/07_classification/b128'))\n"
            "text = format_summary(summarize(None, records, write=False))\n"
            "assert len(records) > 100 and 'InfoSAM' in text, len(records)\n"
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, encoding="utf-8")
    assert done.returncode == 0, done.stderr
    # and the check can fail: a name from the runner does bring torch in
    done = subprocess.run([sys.executable, "-c", "import sys; from samlib.experiments import run_grid; "
                           "assert 'torch' not in sys.modules"], cwd=ROOT, capture_output=True, text=True,
                          encoding="utf-8")
    assert done.returncode != 0


def test_method_order_matches_train():
    assert stats.METHOD_ORDER == METHODS


def _record(task, method, rate, seed, val, test, hp=None):
    keys = ("val_acc", "test_acc") if task == "classification" else ("val_garment_miou", "test_garment_miou")
    return {"config": {"method": method, "hparams": hp or {}, "seed": seed, "task": task}, "noise_rate": rate,
            "final": dict(zip(keys, (val, test))), "history": [{"epoch_time": 1.0}]}


def test_summarize_selects_each_task_on_its_own_validation_metric():
    recs = []
    for seed in (0, 1):
        recs += [_record("classification", "SAM", 0.4, seed, 0.6, 0.7, {"rho": 0.05}),
                 _record("classification", "SAM", 0.4, seed, 0.5, 0.8, {"rho": 0.1}),
                 _record("classification", "SGD", 0.4, seed, 0.5, 0.6 + 0.01 * seed),
                 _record("segmentation", "SAM", 0.4, seed, 0.3, 0.3, {"rho": 0.05}),
                 _record("segmentation", "SAM", 0.4, seed, 0.4, 0.2, {"rho": 0.1}),
                 _record("segmentation", "SGD", 0.4, seed, 0.2, 0.25)]
    summary = E.summarize(None, recs, write=False)
    chosen = {(r["task"], r["method"]): r["hparams"] for r in summary["selected"]}
    assert chosen == {("classification", "SAM"): {"rho": 0.05}, ("classification", "SGD"): {},
                      ("segmentation", "SAM"): {"rho": 0.1}, ("segmentation", "SGD"): {}}
    assert summary["selection_metric"] == "val_acc, val_garment_miou"
    paired = {(p["metric"], p["a"], p["b"]): p["diffs"] for p in summary["paired"]}
    assert paired[("test_acc", "SAM", "SGD")] == pytest.approx([0.1, 0.09])
    assert paired[("test_garment_miou", "SAM", "SGD")] == pytest.approx([-0.05, -0.05])
    one_task = E.summarize(None, [r for r in recs if r["config"]["task"] == "segmentation"], write=False)
    assert one_task["selection_metric"] == "val_garment_miou"


def test_load_model_builds_what_the_record_stores(tmp_path):
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, 5, width=4)  # not what the dataset's name suggests (1 channel, 10 classes)
    (tmp_path / "models").mkdir()
    torch.save(model.state_dict(), tmp_path / "models" / "r.pt")
    record = {"run_id": "r", "config": {"model": "small_cnn", "model_kwargs": {"width": 4}, "task": "classification"},
              "data": {"dataset": "fashion"}, "num_classes": 5, "in_channels": 3}
    loaded = E.load_model(tmp_path, record)
    x = torch.randn(2, 3, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


def test_load_model_reads_records_written_before_the_architecture_was_stored(tmp_path):
    # a record as chapter 08's first grid wrote it: no num_classes / in_channels, 10 garment classes + background
    torch.manual_seed(0)
    model = build_model("unet", 1, 11, width=4)
    (tmp_path / "models").mkdir()
    torch.save(model.state_dict(), tmp_path / "models" / "noise0_SGD_seed0.pt")
    record = {"run_id": "noise0_SGD_seed0", "data": {"dataset": "fashion_scenes"},
              "config": {"model": "unet", "model_kwargs": {"width": 4}, "task": "segmentation"}}
    x = torch.randn(1, 1, 32, 32)
    out = E.load_model(tmp_path, record)(x)
    assert out.shape == (1, 11, 32, 32) and torch.equal(out, model.eval()(x))
