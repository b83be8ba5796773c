"""Experiment grids: methods x hyperparameters x label-noise rates x seeds, resumable.

Python API::

    grid = Grid(name="demo", data=DataSpec(n_train=2000, noise_rates=...), ...)
    summary = run_grid(grid, "runs/demo")

Command line::

    python -m samlib.experiments demo                      # the README's small SGD/SAM/InfoSAM comparison
    python -m samlib.experiments run grid.json --out DIR   # a grid described in JSON (see Grid)
    python -m samlib.experiments grid --methods SGD SAM:rho=0.05,0.1 InfoSAM:rho=0.1 --noise 0 0.4 --seeds 0 1 2
    python -m samlib.experiments summarize DIR
    SAMLIB_MODE=standard python -m samlib.experiments course classification --out DIR   # chapter 07's grid
    python -m samlib.experiments preset cifar10-resnet18 --root DATA --out DIR   # literature recipe, GPU

Each run writes ``DIR/records/<run id>.json`` atomically; a run whose record exists is skipped, so
an interrupted grid resumes where it stopped and loses no finished run. ``DIR/summary.md`` and
``DIR/summary.json`` hold mean +- std over seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import data as D
from .distributed import init_from_env, is_rank_zero, world
from .modes import mode, pick
from .optim import OPTIMIZERS
from .train import METHODS, TrainConfig, train, write_json_atomic

__all__ = ["DataSpec", "Grid", "prepare_data", "run_grid", "summarize", "load_records", "run_id", "cifar_preset",
           "PRESETS", "main", "mean_curve", "load_model", "selected_records", "format_table", "format_summary", "COURSE_RESULTS", "classification_grid", "segmentation_grid", "COURSE_GRIDS", "paired_differences", "format_paired", "T975"]


@dataclass
class DataSpec:
    """Which data a grid trains on. The split and the label noise depend on ``data_seed`` only,
    so every method and every training seed sees the same noisy dataset."""

    dataset: str = "fashion"          # "fashion" | "fashion_scenes" | "cifar10" | "cifar100"
    n_train: int | None = 4000        # examples drawn from the training split (None: all)
    n_test: int | None = None         # test examples (None: all; scenes: 1000)
    val_fraction: float = 0.1         # carved out of the training examples, for choosing rho
    noise_kind: str = "symmetric"     # label noise ("symmetric" | "pairflip"); scenes: object-level mask noise
    subset: bool | None = True        # Fashion-MNIST: True = the bundled subset (offline, reproducible)
    root: str | None = None           # where full datasets live
    data_seed: int = 0
    verify: bool = True               # check the CIFAR archive's official md5
    scene_size: int = 64              # fashion_scenes: canvas side in pixels (garments scale with it)

    def validate(self):
        if self.dataset not in ("fashion", "fashion_scenes", "cifar10", "cifar100"):
            raise ValueError(f"Unknown dataset {self.dataset!r}. Choose fashion, fashion_scenes, cifar10 or cifar100.")
        if self.scene_size < 16 or self.scene_size % 4:
            raise ValueError(f"Invalid scene_size {self.scene_size}: use a multiple of 4 (the U-Net pools twice), >= 16.")
        return self


def _take(n_total: int, n: int | None, seed: int) -> torch.Tensor:
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return perm if n is None else perm[:n]


def prepare_data(spec: DataSpec, noise_rate: float = 0.0) -> dict:
    """Train (noisy, with clean labels kept), validation (noisy like train) and clean test data.

    Independent streams derived from ``data_seed`` pick the examples, the flipped labels and the
    validation split, so the validation set holds the same fraction of noisy labels as training.
    """
    spec.validate()
    seed_take, seed_test, seed_noise, seed_split = (1000 * spec.data_seed + k for k in range(4))
    if not 0.0 <= noise_rate < 1.0:
        raise ValueError(f"Invalid noise rate: {noise_rate!r}. It must lie in [0, 1).")
    if spec.dataset == "fashion_scenes":
        n_train, n_test = spec.n_train or 2000, spec.n_test or 1000
        garments_tr = D.load_fashion_mnist("train", root=spec.root, subset=spec.subset)
        garments_te = D.load_fashion_mnist("test", root=spec.root, subset=spec.subset)
        x, y, clean = D.fashion_scenes(n_train, seed_take, source=garments_tr, mask_noise=noise_rate,
                                       return_clean=True, size=spec.scene_size)
        xt, yt = D.fashion_scenes(n_test, seed_test, source=garments_te, size=spec.scene_size)
        task, num_classes = "segmentation", 11
    else:
        if spec.dataset == "fashion":
            x, clean = D.load_fashion_mnist("train", root=spec.root, subset=spec.subset)
            xt, yt = D.load_fashion_mnist("test", root=spec.root, subset=spec.subset)
            num_classes = 10
        else:
            x, clean = D.load_cifar(spec.dataset, "train", root=spec.root, verify=spec.verify)
            xt, yt = D.load_cifar(spec.dataset, "test", root=spec.root, verify=spec.verify)
            num_classes = D.CIFAR[spec.dataset]["classes"]
        idx = _take(len(x), spec.n_train, seed_take)
        x, clean = x[idx], clean[idx]
        tidx = _take(len(xt), spec.n_test, seed_test)
        xt, yt = xt[tidx], yt[tidx]
        y = clean
        if noise_rate > 0:
            y, _ = D.add_label_noise(clean, noise_rate, num_classes, seed=seed_noise, kind=spec.noise_kind)
        task = "classification"
    tr, va = D.split_validation(len(x), spec.val_fraction, seed_split)
    return {"train": (x[tr], y[tr], clean[tr]), "val": (x[va], y[va]), "test": (xt, yt),
            "num_classes": num_classes, "in_channels": x.shape[1], "task": task}


@dataclass
class Grid:
    """A grid: every method with every combination of its hyperparameter values, at every noise
    rate, for every seed. ``methods`` maps a method name to ``{hyperparameter: [values]}``."""

    name: str = "grid"
    data: DataSpec = field(default_factory=DataSpec)
    train: dict = field(default_factory=dict)           # TrainConfig fields shared by all runs
    methods: dict = field(default_factory=lambda: {"SGD": {}, "SAM": {"rho": [0.05]}})
    noise_rates: list = field(default_factory=lambda: [0.0])
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    overrides: dict = field(default_factory=dict)       # per-method TrainConfig fields, e.g. weight decay
    save_models: list = field(default_factory=list)     # seeds whose final weights go to DIR/models/<run id>.pt
    seeds_per_noise: dict = field(default_factory=dict)  # e.g. {"0.4": [0, 1, 2, 3, 4]}: more seeds where it matters

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        d = dict(d)
        d["data"] = DataSpec(**d.get("data", {}))
        return cls(**d)

    def validate(self):
        for method, hp in self.methods.items():
            if method not in METHODS:
                raise ValueError(f"Unknown method {method!r}. Choose from: {', '.join(METHODS)}.")
            if not isinstance(hp, dict):
                raise ValueError(f"methods[{method!r}] must map hyperparameter names to lists of values.")
        for rate in self.noise_rates:
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"Invalid noise rate: {rate!r}. Noise rates must lie in [0, 1).")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed.")
        unknown = set(self.seeds_per_noise) - {_fmt(rate) for rate in self.noise_rates}
        if unknown:
            raise ValueError(f"seeds_per_noise has keys {sorted(unknown)} that are not noise rates; use the rate as "
                             f"text, one of {[_fmt(rate) for rate in self.noise_rates]}.")
        self.data.validate()
        return self

    def runs(self):
        """Yield ``(noise_rate, TrainConfig)`` for every run, in a fixed order."""
        for rate in self.noise_rates:
            for method, hp in self.methods.items():
                names = sorted(hp)
                for values in itertools.product(*(hp[k] if isinstance(hp[k], list) else [hp[k]] for k in names)):
                    for seed in self.seeds_per_noise.get(_fmt(rate), self.seeds):
                        fields = {**self.train, **self.overrides.get(method, {})}
                        yield rate, TrainConfig(method=method, hparams=dict(zip(names, values)), seed=seed,
                                                **fields).validate()


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def run_id(rate: float, config: TrainConfig) -> str:
    hp = "-".join(f"{k}{_fmt(v)}" for k, v in sorted(config.hparams.items()))
    return f"noise{_fmt(rate)}_{config.method}{'-' + hp if hp else ''}_seed{config.seed}"


def _exists_on_rank_zero(path: Path) -> bool:
    """Whether rank 0 sees ``path``; every process gets rank 0's answer, so all skip the same runs."""
    rank, world_size = world()
    found = [path.exists() if rank == 0 else None]
    if world_size > 1:
        torch.distributed.broadcast_object_list(found, src=0)
    return bool(found[0])


def run_grid(grid: Grid, out_dir: str | Path, progress: bool = True, log=print, shard: tuple[int, int] = (0, 1)) -> dict:
    """Run every missing run of ``grid`` under ``out_dir`` and return the summary.

    ``shard=(i, n)`` runs only runs ``i, i+n, i+2n, ...``: start ``n`` processes with the same
    ``out_dir`` to use ``n`` cores or machines; any of them (or ``summarize``) merges all records.

    Under ``torchrun`` every process runs every run on its share of each batch (DDP); only rank 0
    writes records, the summary and log lines.
    """
    grid.validate()
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"Invalid shard {index}/{count}: use i/n with 0 <= i < n, e.g. 0/2 and 1/2.")
    out = Path(out_dir)
    if not is_rank_zero():
        log = lambda *args: None  # noqa: E731
    else:
        (out / "records").mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "grid.json", dataclasses.asdict(grid))
    data_cache: dict = {}
    runs = list(grid.runs())
    for i, (rate, config) in enumerate(runs, 1):
        if (i - 1) % count != index:
            continue
        rid = run_id(rate, config)
        path = out / "records" / f"{rid}.json"
        if _exists_on_rank_zero(path):
            log(f"[{i}/{len(runs)}] {rid}: record exists, skipped")
            continue
        if rate not in data_cache:
            data_cache[rate] = prepare_data(grid.data, rate)
        d = data_cache[rate]
        config.task = d["task"]
        record = train(config, d["train"], d["test"], d["val"], num_classes=d["num_classes"],
                       in_channels=d["in_channels"], progress=progress,
                       extra_record={"run_id": rid, "noise_rate": rate, "data": dataclasses.asdict(grid.data)})
        model = record.pop("model")
        if is_rank_zero():  # the weights first: a run counts as done only once its record exists
            if config.seed in grid.save_models:
                weights = out / "models" / f"{rid}.pt"
                weights.parent.mkdir(exist_ok=True)
                torch.save({k: v.cpu() for k, v in model.state_dict().items()}, weights.with_suffix(".tmp"))
                os.replace(weights.with_suffix(".tmp"), weights)
            write_json_atomic(path, record)
        final = record["final"]
        log(f"[{i}/{len(runs)}] {rid}: " + ", ".join(f"{k} {final[k]:.4f}" for k in _metric_keys(final)))
    if not is_rank_zero():
        return {}
    return summarize(out)


def _metric_keys(row: dict) -> list[str]:
    return [k for k in ("val_acc", "test_acc", "val_miou", "test_miou", "test_pixel_acc", "train_clean_acc",
                        "memorized", "top_hessian_eig") if k in row]


def load_records(out_dir: str | Path) -> list[dict]:
    """Every run record under ``out_dir/records``, sorted by run id."""
    paths = sorted(Path(out_dir).glob("records/*.json"))
    return [json.loads(p.read_text()) for p in paths]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(out_dir: str | Path | None, records: list[dict] | None = None, write: bool = True) -> dict:
    """Group records by (noise, method, hyperparameters); mean +- std over seeds of the final metrics.

    Also picks, per noise rate and method, the hyperparameters with the best mean *validation*
    score (never the test score) and reports that setting's test score, and the seed-paired
    differences of :func:`paired_differences`. Writes ``summary.json`` and ``summary.md`` into
    ``out_dir`` unless ``write=False``.
    """
    records = load_records(out_dir) if records is None else records
    groups: dict = {}
    for r in records:
        c = r["config"]
        key = (r["noise_rate"], c["method"], json.dumps(c["hparams"], sort_keys=True))
        groups.setdefault(key, []).append(r)
    rows = []
    for (rate, method, hp), recs in sorted(groups.items(), key=lambda kv: (kv[0][0], _method_order(kv[0][1]), kv[0][2])):
        row = {"noise_rate": rate, "method": method, "hparams": json.loads(hp),
               "seeds": sorted(r["config"]["seed"] for r in recs)}
        for k in _metric_keys(recs[0]["final"]) + ["epoch_time"]:
            row[k] = mean_std([r["final"][k] if k != "epoch_time" else
                               statistics.fmean(h["epoch_time"] for h in r["history"]) for r in recs])
        rows.append(row)
    val_key = "val_miou" if rows and "val_miou" in rows[0] else "val_acc"
    selected = {}
    for row in rows:
        if val_key not in row:
            continue
        k = f"{_fmt(row['noise_rate'])}/{row['method']}"
        if k not in selected or row[val_key][0] > selected[k][val_key][0]:
            selected[k] = row
    summary = {"rows": rows, "selected": list(selected.values()), "selection_metric": val_key}
    summary["paired"] = paired_differences(summary, records)
    if write and out_dir is not None and Path(out_dir).is_dir():
        out = Path(out_dir)
        write_json_atomic(out / "summary.json", summary)
        (out / "summary.md").write_text(format_summary(summary))
    return summary


def _method_order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def _cell(key: str, mean_sd: tuple[float, float]) -> str:
    if key == "top_hessian_eig":  # a curvature, not a fraction
        return " ± ".join(f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}" for v in mean_sd)
    return f"{100 * mean_sd[0]:.2f} ± {100 * mean_sd[1]:.2f}"


# Student-t 0.975 quantiles t_{0.975, df} for df = 1..30 (beyond, the normal 1.96 is within 1.5%).
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
        2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
        2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def selected_records(summary: dict, records: list[dict]) -> dict:
    """``{(noise_rate, method): [records]}`` of each method's validation-selected setting, by seed."""
    chosen = {(row["noise_rate"], row["method"]): row["hparams"] for row in summary["selected"]}
    out: dict = {}
    for r in sorted(records, key=lambda r: r["config"]["seed"]):
        key = (r["noise_rate"], r["config"]["method"])
        if chosen.get(key) == r["config"]["hparams"]:
            out.setdefault(key, []).append(r)
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], _method_order(kv[0][1]))))


def mean_curve(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Epochs at which ``key`` was evaluated in every record, and its mean over the records there."""
    epochs = sorted(set.intersection(*({h["epoch"] for h in r["history"] if key in h} for r in records)))
    values = [{h["epoch"]: h[key] for h in r["history"] if key in h} for r in records]
    return epochs, [statistics.fmean(v[e] for v in values) for e in epochs]


def paired_differences(summary: dict, records: list[dict], pairs=(("InfoSAM", "SAM"), ("SAM", "SGD")),
                       metric: str | None = None) -> list[dict]:
    """Per noise rate, the seed-paired difference ``a - b`` of the test metric, each method at its
    validation-selected hyperparameters, with a 95% Student-t interval over seeds.

    Pairing by seed removes what the methods share (initialization, data order, the noisy labels),
    so the interval is usually much narrower than comparing two mean +- std columns.
    """
    metric = metric or ("test_miou" if summary["selection_metric"] == "val_miou" else "test_acc")
    by_seed = {key: {r["config"]["seed"]: r["final"][metric] for r in recs}
               for key, recs in selected_records(summary, records).items()}
    out = []
    for rate in sorted({rate for rate, _ in by_seed}):
        for a, b in pairs:
            sa, sb = by_seed.get((rate, a), {}), by_seed.get((rate, b), {})
            seeds = sorted(set(sa) & set(sb))
            if not seeds:
                continue
            diffs = [sa[s] - sb[s] for s in seeds]
            mean, sd = mean_std(diffs)
            n = len(diffs)
            half = (T975[n - 2] if n - 1 <= len(T975) else 1.96) * sd / math.sqrt(n) if n > 1 else math.inf
            out.append({"noise_rate": rate, "a": a, "b": b, "metric": metric, "seeds": seeds, "diffs": diffs,
                        "mean": mean, "sd": sd, "ci95": (mean - half, mean + half)})
    return out


def format_paired(rows: list[dict]) -> str:
    """Markdown table of :func:`paired_differences` (percentage points)."""
    lines = ["| noise | difference | seeds | mean (pp) | 95% interval (pp) | per seed (pp) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95"]
        per_seed = ", ".join(f"{100 * d:+.2f}" for d in r["diffs"])
        lines.append(f"| {_fmt(r['noise_rate'])} | {r['a']} − {r['b']} | {len(r['seeds'])} | {100 * r['mean']:+.2f} | "
                     f"[{100 * lo:+.2f}, {100 * hi:+.2f}] | {per_seed} |")
    return "\n".join(lines) + "\n"


def format_table(rows: list[dict], title: str | None = None) -> str:
    """Markdown table of summary rows: metrics in %, mean ± std over seeds, seconds per epoch."""
    if not rows:
        return ""
    keys = _metric_keys({k: 0 for row in rows for k in row})  # e.g. `memorized` exists only with label noise
    head = "| noise | method | hyperparameters | seeds | " + " | ".join(keys) + " | s/epoch |"
    lines = ([f"### {title}", ""] if title else []) + [head, "|" + "---|" * (5 + len(keys))]
    for r in rows:
        hp = ", ".join(f"{k}={_fmt(v)}" for k, v in r["hparams"].items()) or "-"
        cells = " | ".join(_cell(k, r[k]) if k in r else "–" for k in keys)
        lines.append(f"| {_fmt(r['noise_rate'])} | {r['method']} | {hp} | {len(r['seeds'])} | {cells} | "
                     f"{r['epoch_time'][0]:.2f} |")
    return "\n".join(lines) + "\n"


def format_summary(summary: dict) -> str:
    """Markdown: the validation-selected setting per method, paired differences, every setting."""
    paired = ""
    if summary.get("paired"):
        paired = "\n### Paired differences at the selected settings (95% t-interval over seeds)\n\n" + format_paired(summary["paired"])
    title = f"Selected by mean {summary['selection_metric']} (metrics in %, mean ± std over seeds)"
    return format_table(summary["selected"], title) + paired + "\n" + format_table(summary["rows"], "All settings")


COURSE_RESULTS = Path(__file__).resolve().parents[1] / "chapters" / "results"


# ---- command line ---------------------------------------------------------------------------

def demo_grid() -> Grid:
    """The README's main job: SGD vs SAM vs InfoSAM in chapter 07's setting at 40% label noise.

    Two of chapter 07's seeds (one in quick mode), each method at the rho chapter 07 chose on
    validation for this noise level; about 3 minutes on a 2-core CPU.
    """
    setting = classification_grid()
    rho = 0.15  # chapter 07's validation choice at 40% noise, for both SAM and InfoSAM
    return Grid(name="demo", data=setting.data, train=setting.train,
                methods={"SGD": {}, "SAM": {"rho": [rho]}, "InfoSAM": {"rho": [rho]}},
                noise_rates=[0.4], seeds=pick([0], [0, 1]))


def classification_grid() -> Grid:
    """Chapter 07's grid: seven methods, clean / 20% / 40% symmetric label noise, 3 seeds (5 at 40%).

    Standard mode (the committed records): a width-16 SmallCNN (about 24k parameters) on 1500
    bundled Fashion-MNIST images (20% held out for choosing rho) for 40 epochs: long enough for
    SGD to start memorizing flipped labels, small enough for a 2-core CPU in about two hours (143 runs).
    Every SAM-type method gets two rho values (ASAM's scale-invariant rho is about 10x larger);
    the chapter reports each at the rho with the best mean validation accuracy.
    Quick mode: the same pipeline at toy size, for the tests.
    """
    rhos = pick([0.1], [0.05, 0.15])
    methods = {"SGD": {}, "SAM": {"rho": rhos}, "ASAM": {"rho": [10 * r for r in rhos]},
               "FisherSAM": {"rho": rhos}, "VaSSO": {"rho": rhos}, "FriendlySAM": {"rho": rhos},
               "InfoSAM": {"rho": rhos}}
    return Grid(
        name="07_classification",
        data=DataSpec(dataset="fashion", n_train=pick(320, 1500), n_test=pick(200, 2000), val_fraction=0.2),
        train=dict(model="small_cnn", model_kwargs={"width": pick(8, 16)}, epochs=pick(3, 40), batch_size=pick(32, 128),
                   lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine", eval_every=pick(1, 4),
                   sharpness_examples=pick(64, 256)),
        methods=methods if mode() != "quick" else {m: methods[m] for m in ("SGD", "SAM", "InfoSAM")},
        noise_rates=pick([0.0, 0.4], [0.0, 0.2, 0.4]),
        seeds=pick([0, 1], [0, 1, 2]),
        seeds_per_noise=pick({}, {"0.4": [0, 1, 2, 3, 4]}),  # the headline cell gets 5 seeds
    )


def segmentation_grid() -> Grid:
    """Chapter 08's grid: SGD, SAM, ASAM, InfoSAM on Fashion-MNIST scenes, clean masks and 40%
    object-level mask noise, 3 seeds; a width-8 U-Net (about 30k parameters) on 500 scenes of
    32 x 32 pixels for 30 epochs, batch 16, lr 0.1 (standard mode; about 45 CPU-minutes)."""
    rhos = pick([0.1], [0.05, 0.15])
    return Grid(
        name="08_segmentation",
        data=DataSpec(dataset="fashion_scenes", n_train=pick(64, 500), n_test=pick(32, 300), val_fraction=0.2,
                      scene_size=32),
        train=dict(model="unet", model_kwargs={"width": pick(4, 8)}, task="segmentation", epochs=pick(2, 30),
                   batch_size=16, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                   eval_every=pick(1, 5), sharpness_examples=pick(16, 64)),
        methods={"SGD": {}, "SAM": {"rho": rhos}, "ASAM": {"rho": [10 * r for r in rhos]}, "InfoSAM": {"rho": rhos}},
        noise_rates=[0.0, 0.4],
        seeds=pick([0, 1], [0, 1, 2]),
        save_models=[0],  # for the chapter's prediction figure
    )


def load_model(out_dir: str | Path, record: dict):
    """The saved final weights of a grid run (``Grid.save_models``), in eval mode on the CPU."""
    from .models import build_model
    path = Path(out_dir) / "models" / f"{record['run_id']}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: only seeds listed in the grid's save_models keep their weights.")
    c = record["config"]
    num_classes = 11 if c["task"] == "segmentation" else D.CIFAR.get(record["data"]["dataset"], {}).get("classes", 10)
    in_channels = 3 if record["data"]["dataset"].startswith("cifar") else 1
    model = build_model(c["model"], in_channels, num_classes, **c["model_kwargs"])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


COURSE_GRIDS = {"classification": classification_grid, "segmentation": segmentation_grid}


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


def _parse_method(text: str) -> tuple[str, dict]:
    """``SAM:rho=0.05,0.1;theta=0.9`` -> ("SAM", {"rho": [0.05, 0.1], "theta": [0.9]})."""
    name, _, rest = text.partition(":")
    hp = {}
    for part in filter(None, rest.split(";")):
        key, _, values = part.partition("=")
        hp[key] = [json.loads(v) for v in values.split(",")]
    return name, hp


def plot_summary(out_dir: str | Path, metric: str = "test_acc"):
    """Test-metric curves (mean over seeds) per method and noise rate; saves ``DIR/curves.png``."""
    import matplotlib
    matplotlib.use("Agg") if "matplotlib.pyplot" not in sys.modules else None
    import matplotlib.pyplot as plt
    records = load_records(out_dir)
    rates = sorted({r["noise_rate"] for r in records})
    fig, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 3.6), squeeze=False)
    for ax, rate in zip(axes[0], rates):
        curves: dict = {}
        for r in records:
            if r["noise_rate"] == rate and metric in r["final"]:
                label = r["config"]["method"] + "".join(f" {k}={_fmt(v)}" for k, v in r["config"]["hparams"].items())
                curves.setdefault(label, []).append(r)
        for label, runs in curves.items():
            epochs, mean = mean_curve(runs, metric)
            ax.plot(epochs, [100 * m for m in mean], label=label)
        ax.set(xlabel="epoch", ylabel=f"{metric.replace('_', ' ')} (%)", title=f"label noise {rate:.0%}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out_dir) / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m samlib.experiments", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="small SGD vs SAM vs InfoSAM comparison on bundled data (CPU, minutes)")
    p_demo.add_argument("--out", default="runs/demo")
    p_course = sub.add_parser("course", help="a chapter's grid (07 classification, 08 segmentation); $SAMLIB_MODE sizes it")
    p_course.add_argument("name", choices=sorted(COURSE_GRIDS))
    p_course.add_argument("--out", required=True)
    p_course.add_argument("--shard", default="0/1", help="i/n: run every n-th run starting at i (one process per core)")
    p_run = sub.add_parser("run", help="run a grid described in a JSON file")
    p_run.add_argument("config")
    p_run.add_argument("--out", required=True)
    p_run.add_argument("--shard", default="0/1", help="i/n: run every n-th run starting at i (one process per core)")
    p_grid = sub.add_parser("grid", help="run a grid described by flags")
    p_grid.add_argument("--methods", nargs="+", default=["SGD", "SAM:rho=0.05"],
                        help="METHOD or METHOD:hp=v1,v2;hp2=v3, e.g. InfoSAM:rho=0.05,0.1;beta=0.9")
    p_grid.add_argument("--noise", nargs="+", type=float, default=[0.0])
    p_grid.add_argument("--noise-kind", default="symmetric", choices=["symmetric", "pairflip"])
    p_grid.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p_grid.add_argument("--dataset", default="fashion")
    p_grid.add_argument("--n-train", type=int, default=4000)
    p_grid.add_argument("--model", default="small_cnn")
    p_grid.add_argument("--epochs", type=int, default=10)
    p_grid.add_argument("--lr", type=float, default=0.05)
    p_grid.add_argument("--batch-size", type=int, default=128)
    p_grid.add_argument("--device", default=None)
    p_grid.add_argument("--perturbation", default="local", choices=["local", "synced"],
                        help="under torchrun: per-process (m-sharpness) or all-reduced perturbation")
    p_grid.add_argument("--m-sharpness", type=int, default=None, help="single process: chunk size m")
    p_grid.add_argument("--amp", default=None, choices=["bf16", "fp16"])
    p_grid.add_argument("--out", required=True)
    p_grid.add_argument("--shard", default="0/1", help="i/n: run every n-th run starting at i (one process per core)")
    p_pre = sub.add_parser("preset", help="a literature CIFAR recipe (GPU; CIFAR archives in --root)")
    p_pre.add_argument("name", choices=sorted(PRESETS))
    p_pre.add_argument("--root", default=None, help="folder with the CIFAR python-version archive (or $SAMLIB_DATA)")
    p_pre.add_argument("--out", required=True)
    p_pre.add_argument("--seeds", nargs="+", type=int, default=None)
    p_pre.add_argument("--epochs", type=int, default=None)
    p_pre.add_argument("--methods", nargs="+", default=None, help="a subset of the preset's methods")
    p_pre.add_argument("--device", default=None)
    p_pre.add_argument("--amp", default=None, choices=["bf16", "fp16"])
    p_pre.add_argument("--perturbation", default="local", choices=["local", "synced"])
    p_pre.add_argument("--batch-size", type=int, default=None, help="override (smoke tests)")
    p_pre.add_argument("--steps-per-epoch", type=int, default=None, help="override (smoke tests)")
    p_sum = sub.add_parser("summarize", help="rewrite DIR/summary.md from DIR/records")
    p_sum.add_argument("out")
    args = parser.parse_args(argv)
    distributed = init_from_env()  # under torchrun: one process per GPU (NCCL) or CPU (gloo)
    try:
        return _dispatch(args, parser)
    finally:
        if distributed:  # leave together, so no process tears down a connection another still uses
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def _parse_shard(text: str, parser) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        parser.error(f"--shard {text!r}: use i/n, e.g. 0/2")
    if not 0 <= shard[0] < shard[1]:
        parser.error(f"--shard {text!r}: need 0 <= i < n")
    return shard


def _dispatch(args, parser):
    shard = _parse_shard(getattr(args, "shard", "0/1"), parser)
    if args.command == "summarize":
        summary = summarize(args.out)
        print(format_summary(summary))
        return summary
    if args.command == "demo":
        grid = demo_grid()
    elif args.command == "course":
        grid = COURSE_GRIDS[args.name]()
    elif args.command == "run":
        grid = Grid.from_dict(json.loads(Path(args.config).read_text()))
    elif args.command == "preset":
        grid = cifar_preset(*PRESETS[args.name], root=args.root)
        if args.methods:
            unknown = set(args.methods) - set(grid.methods)
            if unknown:
                parser.error(f"--methods {sorted(unknown)} not in the preset ({', '.join(grid.methods)})")
            grid.methods = {m: grid.methods[m] for m in args.methods}
        grid.seeds = args.seeds or grid.seeds
        grid.train.update({k: v for k, v in dict(epochs=args.epochs, device=args.device, amp=args.amp,
                                                  perturbation=args.perturbation, batch_size=args.batch_size,
                                                  steps_per_epoch=args.steps_per_epoch).items() if v is not None})
    else:
        methods = dict(_parse_method(m) for m in args.methods)
        for name in methods:
            if name not in METHODS:
                parser.error(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
        grid = Grid(name=Path(args.out).name, data=DataSpec(dataset=args.dataset, n_train=args.n_train,
                                                            noise_kind=args.noise_kind),
                    train=dict(model=args.model, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                               device=args.device, perturbation=args.perturbation, m_sharpness=args.m_sharpness,
                               amp=args.amp),
                    methods=methods, noise_rates=args.noise, seeds=args.seeds)
    say = print if is_rank_zero() else (lambda *a: None)
    say(f"grid {grid.name!r}: {len(list(grid.runs()))} runs -> {args.out} ({world()[1]} process(es))")
    summary = run_grid(grid, args.out, log=say, shard=shard)
    if not is_rank_zero():
        return summary
    print()
    print(format_summary(summary))
    path = plot_summary(args.out, "test_miou" if summary["selection_metric"] == "val_miou" else "test_acc")
    print(f"figure: {path}\nrecords: {Path(args.out) / 'records'}")
    return summary


if __name__ == "__main__":
    main()
