"""The course's named grids (chapters 07 and 08, the README demo) and the literature's CIFAR presets.

``$SAMLIB_MODE`` sizes the course grids: quick (the tests), standard (the committed records).
"""
from __future__ import annotations

from pathlib import Path

from ..modes import mode, pick
from .grid import Grid
from .spec import DataSpec

__all__ = ["demo_grid", "classification_grid", "segmentation_grid", "COURSE_GRIDS", "cifar_preset", "PRESETS",
           "COURSE_RESULTS"]

#: Where the committed records of chapters 07 and 08 live.
COURSE_RESULTS = Path(__file__).resolve().parents[2] / "chapters" / "results"


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
