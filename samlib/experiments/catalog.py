"""The course's named grids (chapters 07 and 08, the README demo) and the literature's CIFAR presets.

``$SAMLIB_MODE`` sizes the course grids: quick (the tests), standard (the committed records).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

from ..modes import pick
from .grid import Grid
from .spec import DataSpec

__all__ = ["demo_grid", "classification_grid", "classification_grids", "CLASSIFICATION_RHOS",
           "CLASSIFICATION_SGD_LRS", "DEMO_SETTINGS", "segmentation_grid", "SEGMENTATION_RHOS", "segmentation_report",
           "format_segmentation_report", "COURSE_GRIDS", "cifar_preset", "PRESETS",
           "COURSE_RESULTS"]

#: Where the committed records of chapters 07 and 08 live.
COURSE_RESULTS = Path(__file__).resolve().parents[2] / "chapters" / "results"


#: Chapter 07: the rho values of every SAM-type method and the learning rates SGD tunes (five each, log-spaced).
CLASSIFICATION_RHOS = (0.025, 0.05, 0.1, 0.2, 0.4)
CLASSIFICATION_SGD_LRS = (0.0125, 0.025, 0.05, 0.1, 0.2)
#: The demo's settings: chapter 07's validation choices in its batch-32 arm (tests/test_results.py checks them).
DEMO_SETTINGS = {"SGD": {"lr": [0.025]}, "SAM": {"rho": [0.05]}, "InfoSAM": {"rho": [0.05]}}


def demo_grid() -> Grid:
    """The README's main job: SGD vs SAM vs InfoSAM in chapter 07's setting (batch 32, 40% symmetric
    label noise), each method at the setting chapter 07 chose on validation for it; two of chapter
    07's seeds (one in quick mode); about 3 minutes on a 2-core CPU."""
    setting = classification_grid("b32")
    return Grid(name="demo", data=setting.data, train=setting.train, methods=DEMO_SETTINGS,
                noise_rates=setting.noise_rates, seeds=pick([0], [0, 1]))


def classification_grids() -> dict:
    """Chapter 07's experiment, ``{arm: Grid}``: does InfoSAM's noise-aware adversary help, or is it
    SAM at a smaller effective rho?

    Standard mode (the committed records; about 3 CPU-hours, 1.5 h on 2 cores): a width-16 SmallCNN
    on 2200 bundled Fashion-MNIST training images (1000 of them held out for choosing hyperparameters) and
    the 2000 clean test images, 40% label noise, 20 epochs, SGD with momentum 0.9 and weight decay
    5e-4, cosine schedule, evaluation every 2 epochs, 8 seeds. Seed ``s`` draws its own split and
    label noise (``data_seed = s``), shared by every method and arm. Arms:

    * ``b128``, ``b32``: symmetric noise at batch 128 and 32 (minibatch noise grows about 4.4x):
      SGD (5 learning rates) and, at lr 0.05, SAM, InfoSAM and VaSSO with theta = 0.1 (its averaging
      window matched to InfoSAM's beta = 0.9), 5 rho each; ``b32`` adds InverseVarianceSAM (damping
      0.1, the alternative reading of the paper), 3 rho;
    * ``b32_pairflip``: pair-flip noise (class c -> c+1), SAM and InfoSAM, 3 rho (the negative control).

    Quick mode: the same arms at toy size (one or two settings per method, two seeds, two epochs), for the tests.
    """
    rhos = pick([0.05, 0.2], list(CLASSIFICATION_RHOS))
    lrs = pick([0.025, 0.1], list(CLASSIFICATION_SGD_LRS))
    middle = pick([0.1], [0.05, 0.1, 0.2])
    data = DataSpec(dataset="fashion", n_train=pick(200, 2200), n_test=pick(100, None),
                    val_fraction=pick(0.25, 1000 / 2200), data_seed=None)
    train = dict(model="small_cnn", model_kwargs={"width": pick(8, 16)}, epochs=pick(2, 20), lr=0.05, momentum=0.9,
                 weight_decay=5e-4, schedule="cosine", eval_every=pick(1, 2), sharpness_examples=pick(32, 256))
    core = {"SGD": {"lr": lrs}, "SAM": {"rho": rhos}, "VaSSO": {"rho": pick(middle, rhos), "theta": [0.1]},
            "InfoSAM": {"rho": rhos}}

    def arm(name, batch_size, methods, noise_kind="symmetric"):
        return Grid(name=f"07_classification/{name}", data=replace(data, noise_kind=noise_kind),
                    train={**train, "batch_size": batch_size}, methods=methods, noise_rates=[0.4],
                    seeds=pick([0, 1], list(range(8))))

    return {
        "b128": arm("b128", 128, core),
        "b32": arm("b32", 32, {**core, "InverseVarianceSAM": {"rho": middle, "damping": [0.1]}}),
        "b32_pairflip": arm("b32_pairflip", 32, {"SAM": {"rho": middle}, "InfoSAM": {"rho": middle}}, "pairflip"),
    }


def classification_grid(arm: str = "b32") -> Grid:
    """One arm of :func:`classification_grids` (default: batch 32, symmetric noise)."""
    grids = classification_grids()
    if arm not in grids:
        raise ValueError(f"Unknown arm {arm!r} of chapter 07's grid. Choose one of: {', '.join(grids)}.")
    return grids[arm]


#: Chapter 08's rho grids. SAM's brackets the pilot's best value (0.02) between a nearly-SGD 0.01 and an
#: under-fitting 0.05; InfoSAM's is one step higher (at equal rho it acts as a weaker SAM, chapter 07), with two
#: values in common for equal-rho comparisons. Validation picks one per method and noise rate.
SEGMENTATION_RHOS = {"SAM": (0.01, 0.02, 0.05), "InfoSAM": (0.02, 0.05, 0.1)}


def segmentation_grid() -> Grid:
    """Chapter 08's grid: SGD, SAM and InfoSAM (its default rule) on Fashion-MNIST scenes labelled with
    5 garment super-classes (every super-class equally frequent), clean masks and 40% object-level mask noise.

    Standard mode (the committed records): 2000 scenes of 32 x 32 pixels (20% held out, noisy like
    training, for choosing rho by garment-only mIoU) and 300 clean test scenes, a width-8 U-Net (about
    30k parameters), 30 epochs, batch 16, lr 0.05, evaluated every 3 epochs; three rho per SAM-type
    method (:data:`SEGMENTATION_RHOS`); seeds 0, 1, 2, each drawing its own scenes and noise
    (``data_seed = seed``): 42 runs, about 2 CPU-hours (1 hour on 2 cores with two shards). The seed-0
    weights are saved for the chapter's figures. Quick mode: the same pipeline at toy size, for the tests.
    """
    methods = {"SGD": {}, **{m: {"rho": pick([rhos[1]], list(rhos))} for m, rhos in SEGMENTATION_RHOS.items()}}
    return Grid(
        name="08_segmentation",
        data=DataSpec(dataset="fashion_scenes", n_train=pick(96, 2000), n_test=pick(48, 300), val_fraction=0.2,
                      scene_size=32, scene_labels="superclasses", scene_balance=True, data_seed=None),
        train=dict(model="unet", model_kwargs={"width": pick(4, 8)}, task="segmentation", epochs=pick(2, 30),
                   batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                   eval_every=pick(1, 3), sharpness_examples=pick(8, 64)),
        methods=methods,
        noise_rates=[0.0, 0.4],
        seeds=pick([0, 1], [0, 1, 2]),
        save_models=[0],  # for the chapter's figures
    )


# ---- chapter 08's tables: garment-only mIoU, background IoU, peak/early-stopped, memorization vs chance ----

#: The final metrics of chapter 08's tables (means over seeds), in table order.
SEGMENTATION_FINAL = ("val_garment_miou", "test_garment_miou", "test_background_iou", "test_miou",
                      "train_clean_garment_miou", "memorized", "memorized_chance", "memorized_excess", "top_hessian_eig")
#: Seed-paired comparisons of chapter 08: (a, b) means a - b, each method at its validation-chosen rho.
SEGMENTATION_PAIRS = (("SAM", "SGD"), ("InfoSAM", "SGD"), ("InfoSAM", "SAM"))


def _segmentation_run(record: dict) -> dict:
    """One run's numbers: its final metrics, and from its history the peak and early-stopped test
    garment-only mIoU (:func:`samlib.train.history_peak`) and the final per-class test IoU."""
    from ..train import history_peak
    final = record["final"]
    out = {k: final[k] for k in SEGMENTATION_FINAL if final.get(k) is not None}
    h = history_peak(record["history"], "test_garment_miou", select="val_garment_miou")
    out.update(peak=h["peak"], peak_epoch=h["peak_epoch"], drop=h["drop"], stopped=h["stopped"],
               stopped_epoch=h["stopped_epoch"])
    out["class_iou"] = final["test_class_iou"]
    return out


def segmentation_report(records: list[dict]) -> dict:
    """Chapter 08's numbers from its records.

    ``rows``: every (noise rate, method, hyperparameters) with mean +- std over seeds of
    :data:`SEGMENTATION_FINAL`, the peak and early-stopped test garment-only mIoU, the drop from the
    peak, and the per-class test IoU (``class_iou``: one (mean, std) per class). ``selected``: per noise
    rate and method, the row with the best mean *validation* garment-only mIoU (the validation masks
    are as noisy as the training masks; never a test score). ``paired``: the seed-paired differences
    of :data:`SEGMENTATION_PAIRS` at the selected settings, for the final test garment-only mIoU
    and, with mask noise, the memorized-minus-chance fraction.
    """
    from .stats import _paired_row, mean_std, method_order, selected_records
    groups: dict = {}
    for r in records:
        c = r["config"]
        groups.setdefault((r["noise_rate"], c["method"], json.dumps(c["hparams"], sort_keys=True)), []).append(r)
    rows = []
    for (rate, method, hp), recs in sorted(groups.items(), key=lambda kv: (kv[0][0], method_order(kv[0][1]), kv[0][2])):
        recs = sorted(recs, key=lambda r: r["config"]["seed"])
        runs = [_segmentation_run(r) for r in recs]
        row = {"noise_rate": rate, "method": method, "hparams": json.loads(hp), "task": "segmentation",
               "seeds": [r["config"]["seed"] for r in recs]}
        for k in (*SEGMENTATION_FINAL, "peak", "peak_epoch", "drop", "stopped", "stopped_epoch"):
            if all(k in run for run in runs):
                row[k] = mean_std([run[k] for run in runs])
        row["class_iou"] = [mean_std([run["class_iou"][i] for run in runs])
                            if all(run["class_iou"][i] is not None for run in runs) else None
                            for i in range(len(runs[0]["class_iou"]))]
        row["epoch_time"] = mean_std([statistics.fmean(h["epoch_time"] for h in r["history"]) for r in recs])
        rows.append(row)
    selected: dict = {}
    for row in rows:
        key = (row["noise_rate"], row["method"])
        if key not in selected or row["val_garment_miou"][0] > selected[key]["val_garment_miou"][0]:
            selected[key] = row
    report = {"rows": rows, "selected": list(selected.values()), "selection_metric": "val_garment_miou"}
    chosen = selected_records(report, records)
    paired = []
    for metric in ("test_garment_miou", "memorized_excess"):
        for rate in sorted({rate for rate, _ in chosen}):
            for a, b in SEGMENTATION_PAIRS:
                ra = {r["config"]["seed"]: r["final"].get(metric) for r in chosen.get((rate, a), [])}
                rb = {r["config"]["seed"]: r["final"].get(metric) for r in chosen.get((rate, b), [])}
                seeds = sorted(s for s in set(ra) & set(rb) if ra[s] is not None and rb[s] is not None)
                if seeds:
                    paired.append(_paired_row(rate, a, b, metric, seeds, [ra[s] - rb[s] for s in seeds]))
    report["paired"] = paired
    return report


def _pct(mean_sd, digits: int = 1) -> str:
    return f"{100 * mean_sd[0]:.{digits}f} ± {100 * mean_sd[1]:.{digits}f}"


def format_segmentation_report(report: dict) -> str:
    """Chapter 08's three Markdown tables: accuracy (garment-only mIoU final / peak / early-stopped,
    background IoU, mIoU with background), memorization against its chance level, and the paired
    differences. Metrics in %, mean ± std over seeds; rho is the validation choice."""
    from .stats import fmt
    acc = ["| noise | method | ρ | seeds | garment mIoU, final | peak (epoch) | early-stopped | background IoU | "
           "mIoU incl. background |", "|---|---|---|---|---|---|---|---|---|"]
    mem = ["| noise | method | ρ | memorized | chance level | memorized − chance | clean train garment mIoU | "
           "top Hessian eigenvalue |", "|---|---|---|---|---|---|---|---|"]
    for r in report["selected"]:
        rho = fmt(r["hparams"]["rho"]) if "rho" in r["hparams"] else "–"
        acc.append(f"| {fmt(r['noise_rate'])} | {r['method']} | {rho} | {len(r['seeds'])} | "
                   f"{_pct(r['test_garment_miou'])} | {_pct(r['peak'])} ({r['peak_epoch'][0]:.0f}) | "
                   f"{_pct(r['stopped'])} | {_pct(r['test_background_iou'])} | {_pct(r['test_miou'])} |")
        if "memorized" in r:
            eig = r["top_hessian_eig"]
            mem.append(f"| {fmt(r['noise_rate'])} | {r['method']} | {rho} | {_pct(r['memorized'])} | "
                       f"{_pct(r['memorized_chance'])} | {_pct(r['memorized_excess'])} | "
                       f"{_pct(r['train_clean_garment_miou'])} | {eig[0]:.3g} ± {eig[1]:.2g} |")
    pairs = ["| noise | metric | difference | mean (pp) | 95% interval (pp) | per seed (pp) |", "|---|---|---|---|---|---|"]
    for p in report["paired"]:
        lo, hi = p["ci95"]
        name = "garment mIoU" if p["metric"] == "test_garment_miou" else "memorized − chance"
        pairs.append(f"| {fmt(p['noise_rate'])} | {name} | {p['a']} − {p['b']} | {100 * p['mean']:+.1f} | "
                     f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | " + ", ".join(f"{100 * d:+.1f}" for d in p["diffs"]) + " |")
    return "\n\n".join("\n".join(t) for t in (acc, mem, pairs)) + "\n"


#: A course grid is a Grid, or ``{arm: Grid}`` for an experiment in several arms (one folder each).
COURSE_GRIDS = {"classification": classification_grids, "segmentation": segmentation_grid}


def cifar_preset(dataset: str = "cifar10", model: str = "resnet18", root: str | None = None) -> Grid:
    """The literature's CIFAR recipe (see the course's reference table; needs a GPU for 200 epochs).

    ResNet-18 (lr 0.05) or WRN-28-10 (lr 0.1); batch 128; 200 epochs; cosine schedule; weight decay
    5e-4 for SGD and 1e-3 for SAM-type methods; crop, flip and Cutout; 3 seeds. rho: SAM-type
    methods use SAM's published value (0.05 on CIFAR-10, 0.1 on CIFAR-100), ASAM its own (0.5 / 1.0).
    2% of the training set is held out for validation.
    """
    if dataset not in ("cifar10", "cifar100") or model not in ("resnet18", "wrn28-10"):
        raise ValueError(f"Unknown preset {dataset}-{model}. Choose one of: {', '.join(PRESETS)}.")
    rho = 0.05 if dataset == "cifar10" else 0.1
    rho_asam = 0.5 if dataset == "cifar10" else 1.0
    model_name, model_kwargs = ("resnet18", {}) if model == "resnet18" else ("wrn", {"depth": 28, "widen": 10})
    sam_like = {"weight_decay": 1e-3}
    methods = {"SGD": {}, "SAM": {"rho": [rho]}, "ASAM": {"rho": [rho_asam]}, "FisherSAM": {"rho": [rho]},
               "VaSSO": {"rho": [rho]}, "FriendlySAM": {"rho": [rho]}, "InfoSAM": {"rho": [rho]}}
    return Grid(name=f"{dataset}-{model}", data=DataSpec(dataset=dataset, n_train=None, val_fraction=0.02, root=root),
                train=dict(model=model_name, model_kwargs=model_kwargs, epochs=200, batch_size=128,
                           lr=0.05 if model == "resnet18" else 0.1, weight_decay=5e-4, schedule="cosine",
                           augment="flip-crop-cutout"),
                methods=methods, noise_rates=[0.0], seeds=[0, 1, 2],
                overrides={m: sam_like for m in methods if m != "SGD"})


PRESETS = {f"{d}-{m}": (d, m) for d in ("cifar10", "cifar100") for m in ("resnet18", "wrn28-10")}
