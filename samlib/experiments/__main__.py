"""Experiment grids: methods x hyperparameters x label-noise rates x seeds, resumable.

The command line (``python -m samlib.experiments --help``)::

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
import json
import sys
from pathlib import Path

import torch

from ..distributed import init_from_env, is_rank_zero, world
from ..train import METHODS
from .catalog import COURSE_GRIDS, PRESETS, cifar_preset, demo_grid
from .grid import Grid
from .report import format_summary, plot_summary, summarize
from .runner import run_grid
from .spec import DataSpec

__all__ = ["main"]


def _parse_method(text: str) -> tuple[str, dict]:
    """``SAM:rho=0.05,0.1;theta=0.9`` -> ("SAM", {"rho": [0.05, 0.1], "theta": [0.9]})."""
    name, _, rest = text.partition(":")
    hp = {}
    for part in filter(None, rest.split(";")):
        key, _, values = part.partition("=")
        hp[key] = [json.loads(v) for v in values.split(",")]
    return name, hp


def _utf8_output() -> None:
    """The tables print "±" and "−": where stdout/stderr cannot encode them (a pipe or file under a
    cp1252 or ASCII locale), switch them to UTF-8 instead of failing after the grid has run."""
    for stream in (sys.stdout, sys.stderr):
        try:
            "±−".encode(stream.encoding)
        except (UnicodeEncodeError, LookupError, TypeError, AttributeError):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(encoding="utf-8")


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
    _utf8_output()
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
        if isinstance(grid, dict):  # an experiment in several arms: one folder each, DIR/<arm>
            return {arm: _run(g, Path(args.out) / arm, shard) for arm, g in grid.items()}
    elif args.command == "run":
        grid = Grid.from_dict(json.loads(Path(args.config).read_text(encoding="utf-8")))
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
    return _run(grid, args.out, shard)


def _run(grid: Grid, out, shard: tuple[int, int]) -> dict:
    say = print if is_rank_zero() else (lambda *a: None)
    say(f"grid {grid.name!r}: {len(list(grid.runs()))} runs -> {out} ({world()[1]} process(es))")
    summary = run_grid(grid, out, log=say, shard=shard)
    if not is_rank_zero():
        return summary
    print()
    print(format_summary(summary))
    path = plot_summary(out, "test_garment_miou" if summary["selection_metric"] == "val_garment_miou" else "test_acc")
    print(f"figure: {path}\nrecords: {Path(out) / 'records'}")
    return summary


if __name__ == "__main__":
    main()
