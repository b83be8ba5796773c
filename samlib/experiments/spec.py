"""Which data a grid trains on (:class:`DataSpec`) and how it is prepared: a training split with
label noise (clean labels kept), a validation split noisy like training, and a clean test set."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import data as D

__all__ = ["DataSpec", "prepare_data"]


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
    data_seed: int | None = 0         # None: each training seed draws its own data (data_seed = seed; see run_grid)
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
    if spec.data_seed is None:
        raise ValueError("DataSpec.data_seed is None (one data draw per training seed): resolve it first, e.g. "
                         "dataclasses.replace(spec, data_seed=seed), as run_grid does.")
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
        if spec.n_test is not None:   # None: every test image, in the dataset's order (the same for every data_seed)
            tidx = _take(len(xt), spec.n_test, seed_test)
            xt, yt = xt[tidx], yt[tidx]
        y = clean
        if noise_rate > 0:
            y, _ = D.add_label_noise(clean, noise_rate, num_classes, seed=seed_noise, kind=spec.noise_kind)
        task = "classification"
    tr, va = D.split_validation(len(x), spec.val_fraction, seed_split)
    return {"train": (x[tr], y[tr], clean[tr]), "val": (x[va], y[va]), "test": (xt, yt),
            "num_classes": num_classes, "in_channels": x.shape[1], "task": task}
