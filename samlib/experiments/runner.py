"""Run a grid, resumably: one JSON record per run, written atomically; shards and torchrun ranks.

Each run writes ``DIR/records/<run id>.json``; a run whose record exists is skipped, so an
interrupted grid resumes where it stopped and loses no finished run. Seeds listed in
``Grid.save_models`` also keep their final weights in ``DIR/models/<run id>.pt``.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from .. import data as D
from ..distributed import is_rank_zero, world
from ..train import train
from .grid import Grid, run_id
from .report import summarize
from .spec import prepare_data
from .stats import metric_keys, write_json_atomic

__all__ = ["run_grid", "run_data", "load_model"]


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
        spec = run_data(grid, config.seed)
        if (rate, spec.data_seed) not in data_cache:
            data_cache[(rate, spec.data_seed)] = prepare_data(spec, rate)
        d = data_cache[(rate, spec.data_seed)]
        config.task = d["task"]
        record = train(config, d["train"], d["test"], d["val"], num_classes=d["num_classes"],
                       in_channels=d["in_channels"], progress=progress,
                       extra_record={"run_id": rid, "noise_rate": rate, "data": dataclasses.asdict(spec),
                                     "num_classes": d["num_classes"], "in_channels": d["in_channels"]})
        model = record.pop("model")
        if is_rank_zero():  # the weights first: a run counts as done only once its record exists
            if config.seed in grid.save_models:
                _save_weights(model, out / "models" / f"{rid}.pt")
            write_json_atomic(path, record)
        final = record["final"]
        log(f"[{i}/{len(runs)}] {rid}: " + ", ".join(f"{k} {final[k]:.4f}" for k in metric_keys(final)))
    if not is_rank_zero():
        return {}
    return summarize(out)


def run_data(grid: Grid, seed: int):
    """The data a run of ``grid`` with training seed ``seed`` trains on: ``grid.data``, with
    ``data_seed = seed`` when ``grid.data.data_seed`` is None (a fresh split and noise draw per seed)."""
    return grid.data if grid.data.data_seed is not None else dataclasses.replace(grid.data, data_seed=seed)


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    path.parent.mkdir(exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def load_model(out_dir: str | Path, record: dict):
    """The saved final weights of a grid run (``Grid.save_models``), in eval mode on the CPU.

    The architecture comes from the record: its model config, and its number of classes and input
    channels (records written before these two were stored get them from the dataset's name)."""
    from ..models import build_model
    path = Path(out_dir) / "models" / f"{record['run_id']}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: only seeds listed in the grid's save_models keep their weights.")
    c = record["config"]
    num_classes, in_channels = record.get("num_classes"), record.get("in_channels")
    if num_classes is None or in_channels is None:  # an older record
        dataset = record["data"]["dataset"]
        scene_classes = 11  # fashion_scenes: background + 10 garments
        num_classes = scene_classes if c["task"] == "segmentation" else D.CIFAR.get(dataset, {}).get("classes", 10)
        in_channels = 3 if dataset.startswith("cifar") else 1
    model = build_model(c["model"], in_channels, num_classes, **c["model_kwargs"])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
