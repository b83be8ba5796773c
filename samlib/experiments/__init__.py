"""Experiment grids: methods x hyperparameters x label-noise rates x seeds, resumable.

Python API::

    from samlib import experiments as E
    grid = E.Grid(name="demo", data=E.DataSpec(n_train=2000), methods={"SGD": {}, "SAM": {"rho": [0.05]}},
                  noise_rates=[0.0, 0.4], seeds=[0, 1, 2])
    summary = E.run_grid(grid, "runs/demo")         # DIR/records/*.json, DIR/summary.md, DIR/summary.json
    print(E.format_summary(E.summarize("runs/demo")))

Command line: ``python -m samlib.experiments --help`` (see :mod:`samlib.experiments.__main__`).

One concern per module; imports point one way (``__main__ -> catalog, runner -> report -> stats``;
``runner, catalog -> grid -> spec``):

* ``spec``: which data a grid trains on, and preparing it (label noise, validation split);
* ``grid``: the grid of runs and each run's id;
* ``runner``: running a grid resumably (shards, torchrun ranks), saving and loading weights;
* ``stats``: records to numbers (mean +- std, validation selection, paired differences); no torch;
* ``report``: Markdown tables, ``summary.md``/``summary.json``, the curves figure; no torch;
* ``catalog``: the course's grids and the literature's CIFAR presets.

The names below are loaded on first use, so ``from samlib.experiments import summarize`` (records
to tables) does not import torch.
"""
import dataclasses  # noqa: F401  (chapter 07 calls E.dataclasses.asdict; kept so that keeps working)
import importlib

#: Public names, by the module that defines them.
_EXPORTS = {
    "spec": ["DataSpec", "prepare_data"],
    "grid": ["Grid", "run_id"],
    "runner": ["run_grid", "run_data", "load_model"],
    "stats": ["load_records", "mean_std", "selected_records", "mean_curve", "paired_differences", "T975"],
    "report": ["summarize", "format_table", "format_paired", "format_summary", "plot_summary"],
    "catalog": ["demo_grid", "classification_grid", "classification_grids", "segmentation_grid", "COURSE_GRIDS", "cifar_preset", "PRESETS",
                "COURSE_RESULTS"],
    "__main__": ["main"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
