"""The course's named grids (chapters 07 and 08, the README demo) and the literature's CIFAR presets.

``$SAMLIB_MODE`` sizes the course grids: quick (the tests), standard (the committed records).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..modes import mode, pick
from .grid import Grid
from .spec import DataSpec

__all__ = ["demo_grid", "classification_grid", "classification_grids", "CLASSIFICATION_RHOS",
           "CLASSIFICATION_SGD_LRS", "DEMO_SETTINGS", "segmentation_grid", "COURSE_GRIDS", "cifar_preset", "PRESETS",
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
