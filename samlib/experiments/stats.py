"""Records in, numbers out: mean +- std over seeds, validation selection, seed-paired differences.

Standard library only (no torch), so a notebook that only reads committed records stays light;
``tests/test_experiments_layout.py`` checks that importing this module loads no torch.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

__all__ = ["load_records", "write_json_atomic", "mean_std", "summarize_records", "selected_records", "mean_curve",
           "paired_differences", "T975", "SELECTION_METRIC", "TEST_METRIC"]

#: Methods in course order (``samlib.train.METHODS``, which needs torch; a test keeps the two equal).
METHOD_ORDER = ("SGD", "SAM", "ASAM", "FisherSAM", "SSAM", "VaSSO", "FriendlySAM", "InfoSAM", "InverseVarianceSAM")
#: Per task, the validation metric that chooses hyperparameters and the test metric that is reported.
#: Segmentation: garment-only mIoU (chapter 08; the background IoU is about 0.98 for every network).
SELECTION_METRIC = {"classification": "val_acc", "segmentation": "val_garment_miou"}
TEST_METRIC = {"classification": "test_acc", "segmentation": "test_garment_miou"}

# Student-t 0.975 quantiles t_{0.975, df} for df = 1..30 (beyond, the normal 1.96 is within 1.5%).
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
        2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
        2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def fmt(v) -> str:
    """A value as it appears in run ids and tables: floats without trailing zeros (0.05, 1e-05)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def metric_keys(row: dict) -> list[str]:
    """The final metrics a summary reports, in a fixed order, among the keys of ``row``."""
    return [k for k in ("val_acc", "val_acc_tail", "test_acc", "val_miou", "test_miou", "test_pixel_acc", "train_clean_acc",
                        "val_garment_miou", "test_garment_miou", "test_background_iou", "memorized", "memorized_excess",
                        "top_hessian_eig") if k in row]


def method_order(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def task_of(record: dict) -> str:
    return record["config"].get("task", "classification")


def load_records(out_dir: str | Path) -> list[dict]:
    """Every run record under ``out_dir/records``, sorted by run id."""
    paths = sorted(Path(out_dir).glob("records/*.json"))
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths]


def write_json_atomic(path: str | Path, obj) -> None:
    """Write JSON through a temporary file and a rename, so an interruption never leaves half a file.

    The temporary name carries the process id: two shards writing the same file (a grid's
    ``grid.json``) must not rename each other's temporary file away."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize_records(records: list[dict]) -> dict:
    """Group records by (noise, method, hyperparameters, task); mean +- std over seeds of the final metrics.

    Also picks, per noise rate, method and task, the hyperparameters with the best mean *validation*
    score (``SELECTION_METRIC[task]``, never a test score), and adds the seed-paired differences of
    :func:`paired_differences`. Returns ``{"rows", "selected", "selection_metric", "paired"}``.
    """
    groups: dict = {}
    for r in records:
        c = r["config"]
        key = (r["noise_rate"], c["method"], json.dumps(c["hparams"], sort_keys=True), task_of(r))
        groups.setdefault(key, []).append(r)
    rows = []
    for (rate, method, hp, task), recs in sorted(groups.items(), key=lambda kv: (kv[0][0], method_order(kv[0][1]),
                                                                                 kv[0][2], kv[0][3])):
        row = {"noise_rate": rate, "method": method, "hparams": json.loads(hp), "task": task,
               "seeds": sorted(r["config"]["seed"] for r in recs)}
        for k in metric_keys(recs[0]["final"]):
            row[k] = mean_std([r["final"][k] for r in recs])
        row["epoch_time"] = mean_std([statistics.fmean(h["epoch_time"] for h in r["history"]) for r in recs])
        rows.append(row)
    selected = {}
    for row in rows:
        val_key = selection_key(row)
        if val_key not in row:
            continue
        k = (row["noise_rate"], row["method"], row["task"])
        if k not in selected or row[val_key][0] > selected[k][val_key][0]:
            selected[k] = row
    metrics = sorted({selection_key(row) for row in rows}) or ["val_acc"]
    summary = {"rows": rows, "selected": list(selected.values()), "selection_metric": ", ".join(metrics)}
    summary["paired"] = paired_differences(summary, records)
    return summary


def selection_key(row: dict) -> str:
    """The validation score that chooses a row's setting: ``SELECTION_METRIC[task]``, except that
    classification uses ``val_acc_tail`` (the mean over the last evaluations, less noisy) when recorded."""
    key = SELECTION_METRIC[row["task"]]
    return "val_acc_tail" if key == "val_acc" and "val_acc_tail" in row else key


def selected_records(summary: dict, records: list[dict]) -> dict:
    """``{(noise_rate, method): [records]}`` of each method's validation-selected setting, by seed.

    In a folder that mixes tasks, pass one task's records (:func:`paired_differences` does).
    """
    chosen = {(row["noise_rate"], row["method"], row.get("task")): row["hparams"] for row in summary["selected"]}
    out: dict = {}
    for r in sorted(records, key=lambda r: r["config"]["seed"]):
        key = (r["noise_rate"], r["config"]["method"])
        if chosen.get((*key, task_of(r)), chosen.get((*key, None))) == r["config"]["hparams"]:  # None: an older summary
            out.setdefault(key, []).append(r)
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], method_order(kv[0][1]))))


def mean_curve(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Epochs at which ``key`` was evaluated in every record, and its mean over the records there."""
    epochs = sorted(set.intersection(*({h["epoch"] for h in r["history"] if key in h} for r in records)))
    values = [{h["epoch"]: h[key] for h in r["history"] if key in h} for r in records]
    return epochs, [statistics.fmean(v[e] for v in values) for e in epochs]


def paired_differences(summary: dict, records: list[dict], pairs=(("InfoSAM", "SAM"), ("SAM", "SGD")),
                       metric: str | None = None) -> list[dict]:
    """Per noise rate, the seed-paired difference ``a - b`` of the test metric (``TEST_METRIC`` of the
    records' task unless ``metric`` is given), each method at its validation-selected hyperparameters,
    with a 95% Student-t interval over seeds.

    Pairing by seed removes what the methods share (initialization, data order, the noisy labels),
    so the interval is usually much narrower than comparing two mean +- std columns.
    """
    out = []
    for task in sorted({task_of(r) for r in records}):
        task_metric = metric or TEST_METRIC[task]
        chosen = selected_records(summary, [r for r in records if task_of(r) == task])
        by_seed = {key: {r["config"]["seed"]: r["final"][task_metric] for r in recs} for key, recs in chosen.items()}
        for rate in sorted({rate for rate, _ in by_seed}):
            for a, b in pairs:
                sa, sb = by_seed.get((rate, a), {}), by_seed.get((rate, b), {})
                seeds = sorted(set(sa) & set(sb))
                if seeds:
                    out.append(_paired_row(rate, a, b, task_metric, seeds, [sa[s] - sb[s] for s in seeds]))
    return out


def _paired_row(rate, a: str, b: str, metric: str, seeds: list, diffs: list[float]) -> dict:
    mean, sd = mean_std(diffs)
    n = len(diffs)
    half = (T975[n - 2] if n - 1 <= len(T975) else 1.96) * sd / math.sqrt(n) if n > 1 else math.inf
    return {"noise_rate": rate, "a": a, "b": b, "metric": metric, "seeds": seeds, "diffs": diffs,
            "mean": mean, "sd": sd, "ci95": (mean - half, mean + half)}
