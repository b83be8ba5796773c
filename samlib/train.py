"""One training loop for SGD and every samlib optimizer, with per-epoch history and JSON records.

The perturbed pass runs under :func:`samlib.optim.frozen_bn_stats`, so BatchNorm running statistics
are updated once per step, from the unperturbed pass. Seeds fix the initialization and the data
order: on the same CPU the same seed gives the same numbers, and every method sees the same batches.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .data import AUGMENTATIONS, Batches, augment_batch, to_float
from .models import build_model
from .optim import OPTIMIZERS

__all__ = ["TrainConfig", "train", "evaluate", "make_optimizer", "default_device", "environment_info",
           "write_json_atomic", "segmentation_scores", "segmentation_memorization", "history_peak",
           "trivial_segmentation_scores", "final_sharpness"]

METHODS = ("SGD", *OPTIMIZERS)


def default_device() -> torch.device:
    """CUDA if available, else CPU; ``$SAMLIB_DEVICE`` overrides."""
    if os.environ.get("SAMLIB_DEVICE"):
        return torch.device(os.environ["SAMLIB_DEVICE"])
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class TrainConfig:
    """Everything that defines a run (recorded verbatim in its JSON record)."""

    method: str = "SGD"                       # "SGD" or a samlib.optim name ("SAM", "InfoSAM", ...)
    hparams: dict = field(default_factory=dict)  # the method's own, e.g. {"rho": 0.1, "beta": 0.9}
    model: str = "small_cnn"
    model_kwargs: dict = field(default_factory=dict)
    task: str = "classification"              # or "segmentation"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"                  # "cosine" | "step" | "constant" (stepped per iteration)
    step_milestones: tuple = (0.5, 0.75)      # fractions of training for schedule="step" (x0.1 each)
    label_smoothing: float = 0.0
    seed: int = 0
    device: str | None = None
    perturbation: str = "local"               # under DDP: "local" (per-rank eps) or "synced" (see samlib.distributed)
    m_sharpness: int | None = None            # single process: chunks of m examples, each with its own eps
    amp: str | None = None                    # None | "bf16" | "fp16" (fp16 uses a GradScaler)
    augment: str | None = None                # None | "flip-crop" | "flip-crop-cutout" (CIFAR recipes)
    steps_per_epoch: int | None = None        # cap on steps per epoch (smoke tests); None: the whole data
    eval_every: int = 1                       # evaluate (val/test/memorization) every k epochs and at the end
    sharpness_examples: int = 0               # >0: top Hessian eigenvalue of the final training loss on
                                              # this many training examples (eval mode), in ``final``

    def validate(self):
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}. Choose one of: {', '.join(METHODS)}.")
        if self.method == "SGD" and self.hparams:
            raise ValueError(f"SGD takes no hparams, got {self.hparams}. Put lr/momentum/weight_decay in the config.")
        if self.task not in ("classification", "segmentation"):
            raise ValueError(f"Invalid task {self.task!r}. Choose 'classification' or 'segmentation'.")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"Invalid schedule {self.schedule!r}. Choose 'cosine', 'step' or 'constant'.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1.")
        if self.perturbation not in ("local", "synced"):
            raise ValueError(f"Invalid perturbation {self.perturbation!r}. Choose 'local' or 'synced'.")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"Invalid amp {self.amp!r}. Choose None, 'bf16' or 'fp16'.")
        if self.m_sharpness is not None and (self.m_sharpness < 1 or self.batch_size % self.m_sharpness):
            raise ValueError(f"Invalid m_sharpness {self.m_sharpness}: it must divide batch_size={self.batch_size}.")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise ValueError(f"Invalid augment {self.augment!r}. Choose None or one of: {', '.join(AUGMENTATIONS)}.")
        if self.m_sharpness is not None and self.amp is not None:
            raise ValueError("m_sharpness and amp cannot be combined; choose one.")
        if self.eval_every < 1:
            raise ValueError(f"Invalid eval_every {self.eval_every}: evaluate every k >= 1 epochs.")
        if self.sharpness_examples < 0:
            raise ValueError(f"Invalid sharpness_examples {self.sharpness_examples}: use 0 (off) or a positive count.")
        return self


def make_optimizer(config: TrainConfig, params):
    """The configured optimizer: torch SGD, or a samlib variant wrapping the same SGD."""
    base = dict(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.method == "SGD":
        return torch.optim.SGD(params, **base)
    return OPTIMIZERS[config.method](params, torch.optim.SGD, **config.hparams, **base)


def _lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    if config.schedule == "cosine":
        return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if config.schedule == "step":
        marks = [int(f * total_steps) for f in config.step_milestones]
        return lambda step: 0.1 ** sum(step >= m for m in marks)
    return lambda step: 1.0


def segmentation_scores(confusion: torch.Tensor, background: int = 0) -> dict:
    """Scores of a confusion matrix ``C`` (``C[i, j]``: pixels of true class i predicted as j).

    ``IoU_c = C_cc / (sum_j C_cj + sum_i C_ic - C_cc)`` for every class present in the targets or the
    predictions (``None`` in ``class_iou`` for an absent class). ``miou`` averages the present classes,
    background included (the usual definition); ``garment_miou`` averages the present classes other
    than ``background`` (``None`` if there are none); ``background_iou`` is the background's own IoU.
    On scenes that are mostly background, ``miou`` mixes an easy class with the hard ones: report
    ``garment_miou`` and ``background_iou`` separately.
    """
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    iou = tp / union.clamp_min(1)
    garments = present.clone()
    garments[background] = False
    return {"miou": float(iou[present].mean()), "pixel_acc": float(tp.sum() / confusion.sum()),
            "garment_miou": float(iou[garments].mean()) if garments.any() else None,
            "background_iou": float(iou[background]) if present[background] else None,
            "class_iou": [float(v) if p else None for v, p in zip(iou, present)]}


def segmentation_memorization(pred: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor, num_classes: int) -> dict:
    """How much of the mask noise a segmentation model reproduces, and how much of that is chance.

    Pixel level, on the training masks: ``train_clean_acc`` / ``train_noisy_acc`` (agreement with the
    clean / noisy masks), ``train_clean_garment_miou``; where pixels were relabelled (noisy != clean):

    - ``memorized``: the fraction of relabelled pixels predicted with their *noisy* label;
    - ``memorized_chance``: what the model would score there anyway, by predicting them as it predicts
      the *unrelabelled* pixels of the same true class: the mean over relabelled pixels of
      ``P(pred = noisy label | true class, unrelabelled pixel)``, read off its confusion matrix;
    - ``memorized_excess`` = ``memorized - memorized_chance``: the part that is fitting the noise.

    A model that paints every garment with one class memorizes the flips to that class "by chance";
    only the excess measures memorization.
    """
    pred, noisy, clean = pred.cpu(), noisy.cpu(), clean.cpu()
    k = num_classes
    out = {"train_clean_acc": float((pred == clean).double().mean()),
           "train_noisy_acc": float((pred == noisy).double().mean())}
    fitted = segmentation_scores(torch.bincount((clean * k + pred).flatten(), minlength=k * k).view(k, k))
    out["train_clean_garment_miou"] = fitted["garment_miou"]
    changed = noisy != clean
    if changed.any():
        kept = ~changed
        confusion = torch.bincount((clean[kept] * k + pred[kept]), minlength=k * k).view(k, k).double()
        rate = confusion / confusion.sum(1, keepdim=True).clamp_min(1)
        memorized = float((pred[changed] == noisy[changed]).double().mean())
        chance = float(rate[clean[changed], noisy[changed]].mean())
        out.update(memorized=memorized, memorized_chance=chance, memorized_excess=memorized - chance)
    return out


@torch.no_grad()
def _segmentation_memorization(model, x, noisy, clean, device, num_classes, batch_size=256) -> dict:
    model.eval()
    pred = torch.cat([model(to_float(x[i:i + batch_size].to(device))).argmax(1).cpu()
                      for i in range(0, len(x), batch_size)])
    model.train()
    return segmentation_memorization(pred, noisy, clean, num_classes)


def history_peak(history: list[dict], key: str = "test_garment_miou", select: str | None = None) -> dict:
    """The peak, the final value and the drop of ``key`` over a run's evaluated epochs.

    ``peak``/``peak_epoch``: the largest value of ``key`` (on the *test* set this is a diagnostic of
    degradation, never a result one could have chosen). ``final``: the last evaluation; ``drop`` =
    ``peak - final``. With ``select`` (e.g. ``"val_garment_miou"``) also ``stopped``/``stopped_epoch``:
    ``key`` at the epoch with the best ``select`` (early stopping on validation; the first on ties).
    """
    rows = [h for h in history if h.get(key) is not None]
    if not rows:
        raise ValueError(f"No evaluated epoch has {key!r}; evaluated keys: {sorted(history[-1])}.")
    peak = max(rows, key=lambda h: h[key])
    out = {"peak": peak[key], "peak_epoch": peak["epoch"], "final": rows[-1][key], "final_epoch": rows[-1]["epoch"]}
    out["drop"] = out["peak"] - out["final"]
    if select is not None:
        stop = max((h for h in rows if h.get(select) is not None), key=lambda h: h[select])
        out.update(stopped=stop[key], stopped_epoch=stop["epoch"])
    return out


def trivial_segmentation_scores(target: torch.Tensor, garment_class: int, num_classes: int) -> dict:
    """:func:`segmentation_scores` of the trivial predictor "perfect foreground mask + one garment class":
    background where ``target`` is background, ``garment_class`` on every garment pixel. With the most
    frequent garment class of the training masks it is the floor a segmentation model must beat."""
    pred = torch.where(target > 0, torch.full_like(target, garment_class), target)
    k = num_classes
    return segmentation_scores(torch.bincount((target * k + pred).flatten(), minlength=k * k).view(k, k))


@torch.no_grad()
def evaluate(model: nn.Module, x, y, task: str = "classification", batch_size: int = 512, device=None,
             num_classes: int | None = None) -> dict:
    """Loss and accuracy (classification) or loss, mIoU and pixel accuracy (segmentation), in eval mode."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    confusion = None
    for i in range(0, len(x), batch_size):
        xb = to_float(x[i:i + batch_size].to(device))
        yb = y[i:i + batch_size].to(device)
        out = model(xb)
        total_loss += float(F.cross_entropy(out, yb, reduction="sum")) / (yb[0].numel() if task == "segmentation" else 1)
        pred = out.argmax(1)
        if task == "classification":
            correct += int((pred == yb).sum())
        else:
            k = num_classes or out.shape[1]
            c = torch.bincount((yb * k + pred).flatten(), minlength=k * k).view(k, k).cpu()
            confusion = c if confusion is None else confusion + c
        n += len(yb)
    model.train(was_training)
    if task == "classification":
        return {"loss": total_loss / n, "acc": correct / n}
    return {"loss": total_loss / n, **segmentation_scores(confusion)}


def environment_info(device) -> dict:
    device = torch.device(device)
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
            "samlib": __version__, "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON through a temporary file and a rename, so an interruption never leaves half a record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def train(config: TrainConfig, train_data: tuple, test_data: tuple | None = None, val_data: tuple | None = None,
          num_classes: int = 10, in_channels: int | None = None, record_path: str | os.PathLike | None = None,
          progress: bool = True, on_epoch: Callable[[int, dict, nn.Module], None] | None = None,
          extra_record: dict | None = None) -> dict:
    """Train one model; return its record ``{"config", "history", "final", "environment", "model"}``.

    ``train_data`` is ``(x, y)`` or ``(x, y, clean_y)``: with clean labels (label-noise runs) the
    history also tracks accuracy on the clean training labels and how many flipped labels the
    model has memorized. ``test_data``/``val_data`` are ``(x, y)`` with clean labels.
    ``on_epoch(epoch, row, model)`` is called after each epoch's evaluation. The record (without
    the model) is written atomically to ``record_path`` as JSON if given.
    """
    config.validate()
    device = torch.device(config.device) if config.device else default_device()
    from .distributed import amp_sam_step, m_sharpness_step, sam_step, world
    rank, world_size = world()
    if config.m_sharpness is not None and world_size > 1:
        raise ValueError(f"m_sharpness runs on one process, but {world_size} processes were launched. Under torchrun, "
                         "perturbation='local' already gives each process its own eps (m = the per-process batch).")
    if world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    x, y = train_data[0], train_data[1]
    clean = train_data[2] if len(train_data) > 2 else None
    if config.task == "classification" and int(y.max()) >= num_classes:
        raise ValueError(f"Labels go up to {int(y.max())} but num_classes={num_classes}; pass the dataset's "
                         "number of classes.")
    torch.manual_seed(config.seed)
    model = build_model(config.model, in_channels or x.shape[1], num_classes, **config.model_kwargs).to(device)
    opt = make_optimizer(config, model.parameters())
    net = model
    if world_size > 1:
        if config.batch_size % world_size:
            raise ValueError(f"batch_size={config.batch_size} must be divisible by the {world_size} processes.")
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    augment = None
    if config.augment is not None:
        def augment(xb, spec=AUGMENTATIONS[config.augment]):
            return augment_batch(xb, **spec)
    batches = Batches(x, y, config.batch_size, shuffle=True, seed=config.seed, device=device, drop_last=True,
                      augment=augment)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
    if len(batches) == 0:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {len(x)} training examples (the last partial "
                         "batch is dropped). Use a smaller batch_size or more data.")
    steps = min(len(batches), config.steps_per_epoch or len(batches))
    total = config.epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config, total))
    sam = config.method != "SGD"

    def loss_fn(out, target):
        return F.cross_entropy(out, target, label_smoothing=config.label_smoothing)

    history = []
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=f"{config.method} seed {config.seed}", leave=False)
    try:
        for epoch in range(config.epochs):
            model.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            for step, (xb, yb) in enumerate(batches):
                if step == steps:
                    break
                if world_size > 1:  # each process takes its share of the global batch
                    share = len(xb) // world_size
                    xb, yb = xb[rank * share:(rank + 1) * share], yb[rank * share:(rank + 1) * share]
                if not sam:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        out = net(xb)
                        loss = loss_fn(out, yb)
                    (scaler.scale(loss) if scaler else loss).backward()
                    if scaler:
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                    opt.zero_grad()
                elif config.m_sharpness:
                    loss, out = m_sharpness_step(net, opt, loss_fn, xb, yb, config.m_sharpness)
                elif amp_dtype is not None:
                    loss, out, _ = amp_sam_step(net, opt, loss_fn, xb, yb, scaler=scaler, dtype=amp_dtype,
                                                mode=config.perturbation)
                else:
                    loss, out = sam_step(net, opt, loss_fn, xb, yb, mode=config.perturbation)
                sched.step()
                loss_sum += loss.detach().float() * len(yb)
                if config.task == "classification":
                    correct += (out.argmax(1) == yb).sum()
                seen += len(yb)
                if bar is not None:
                    bar.update()
            epoch_time = time.perf_counter() - t0
            row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "epoch_time": epoch_time,
                   "train_loss": float(loss_sum) / seen}
            if config.task == "classification":
                row["train_acc"] = int(correct) / seen
            evaluating = (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs
            if clean is not None and evaluating:
                row.update(_memorization(model, x, y, clean, device) if config.task == "classification" else
                           _segmentation_memorization(model, x, y, clean, device, num_classes))
            for name, data in (("val", val_data), ("test", test_data)):
                if data is not None and evaluating:
                    scores = evaluate(model, data[0], data[1], config.task, device=device, num_classes=num_classes)
                    row.update({f"{name}_{k}": v for k, v in scores.items()})
            history.append(row)
            if not all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
                raise FloatingPointError(f"{config.method} diverged at epoch {epoch + 1} (non-finite metrics: {row}). "
                                         "Lower lr or rho.")
            if on_epoch is not None:
                on_epoch(epoch + 1, row, model)
            if bar is not None:
                bar.set_postfix({k: round(v, 3) for k, v in row.items() if k in ("train_loss", "test_acc", "test_miou")})
    finally:
        if bar is not None:
            bar.close()
    if config.sharpness_examples:
        history[-1]["top_hessian_eig"] = final_sharpness(model, x, y, config.sharpness_examples, device)
    record = {"config": dataclasses.asdict(config), "history": history, "final": history[-1],
              "environment": environment_info(device), **(extra_record or {})}
    if record_path is not None and rank == 0:
        write_json_atomic(Path(record_path), record)
    record["model"] = model
    return record


def final_sharpness(model: nn.Module, x, y, examples: int, device, iters: int = 20, tol: float = 1e-3) -> float:
    """Top Hessian eigenvalue of the mean training loss (the labels trained on, noisy or not) on the
    first ``examples`` training examples, BatchNorm in eval mode; power iteration, seed 0."""
    from .diagnostics import data_loss, top_hessian_eigenvalue
    xs, ys = x[:examples].to(device), y[:examples].to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    def per_example_mean(out, target, reduction="sum"):  # segmentation: mean over pixels, like training
        loss = F.cross_entropy(out, target, reduction="none")
        return loss.reshape(len(loss), -1).mean(1).sum()
    loss_fn = data_loss(model, xs, ys, batch_size=256, loss=per_example_mean)
    eig, _ = top_hessian_eigenvalue(loss_fn, params, iters=iters, tol=tol)
    return eig


@torch.no_grad()
def _memorization(model, x, noisy, clean, device, batch_size=1024) -> dict:
    """Accuracy on the clean and on the noisy training labels, and the memorized fraction of flips."""
    model.eval()
    preds = torch.cat([model(to_float(x[i:i + batch_size].to(device))).argmax(1).cpu()
                       for i in range(0, len(x), batch_size)])
    model.train()
    noisy, clean = noisy.cpu(), clean.cpu()
    flipped = noisy != clean
    out = {"train_clean_acc": float((preds == clean).float().mean()),
           "train_noisy_acc": float((preds == noisy).float().mean())}
    if flipped.any():
        out["memorized"] = float((preds[flipped] == noisy[flipped]).float().mean())
    return out
