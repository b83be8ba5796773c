"""One training loop for SGD and every samlib optimizer, with per-epoch history and JSON records.

The perturbed pass runs under :func:`samlib.optim.frozen_bn_stats`, so BatchNorm running statistics
are updated once per step, from the unperturbed pass. Seeds fix the initialization and the data
order: on the same CPU the same seed gives the same numbers, and every method sees the same batches.
"""
from __future__ import annotations

import dataclasses
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
from .experiments.stats import write_json_atomic  # torch-free; re-exported here for train()'s callers
from .models import build_model
from .optim import OPTIMIZERS, InverseVarianceSAM, frozen_bn_stats

__all__ = ["TrainConfig", "train", "evaluate", "make_optimizer", "default_device", "environment_info",
           "write_json_atomic", "segmentation_scores", "segmentation_memorization", "history_peak",
           "trivial_segmentation_scores", "final_sharpness", "calibration_error",
           "classification_memorization", "encode_predictions", "decode_predictions", "TAIL_EVALUATIONS"]

#: Comparison baselines a grid may run besides the variants (chapter 07 runs inverse-variance weighting,
#: the alternative reading of the paper); ``samlib.optim.OPTIMIZERS`` deliberately leaves them out.
BASELINES = {"InverseVarianceSAM": InverseVarianceSAM}
METHODS = ("SGD", *OPTIMIZERS, *BASELINES)


def default_device() -> torch.device:
    """CUDA if available, else CPU; ``$SAMLIB_DEVICE`` overrides."""
    if os.environ.get("SAMLIB_DEVICE"):
        return torch.device(os.environ["SAMLIB_DEVICE"])
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class TrainConfig:
    """Everything that defines a run (recorded verbatim in its JSON record)."""

    method: str = "SGD"                       # "SGD" or a samlib.optim name ("SAM", "InfoSAM", ...)
    hparams: dict = field(default_factory=dict)  # the method's own, e.g. {"rho": 0.1, "beta": 0.9}; "lr" (any
                                              # method, SGD too) sets ``lr``, so a grid can tune it per method
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

    def __post_init__(self):
        if "lr" in self.hparams:  # a grid may tune the learning rate as a method's hyperparameter
            self.lr = self.hparams["lr"]

    def validate(self):
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}. Choose one of: {', '.join(METHODS)}.")
        if self.method == "SGD" and set(self.hparams) - {"lr"}:
            raise ValueError(f"SGD takes no hparams other than lr, got {self.hparams}. Put momentum/weight_decay "
                             "in the config.")
        if "lr" in self.hparams and self.hparams["lr"] != self.lr:
            raise ValueError(f"hparams lr={self.hparams['lr']} disagrees with lr={self.lr}; set one of them.")
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
    hparams = {k: v for k, v in config.hparams.items() if k != "lr"}
    return {**OPTIMIZERS, **BASELINES}[config.method](params, torch.optim.SGD, **hparams, **base)


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
             num_classes: int | None = None, predictions: bool = False) -> dict:
    """Loss and accuracy (classification) or loss, mIoU and pixel accuracy (segmentation), in eval mode.

    Classification also reports ``ece``, the expected calibration error of the softmax confidence
    (:func:`calibration_error`); the loss is the mean negative log-likelihood (cross-entropy).
    ``predictions=True`` (classification) adds ``"predictions"``: the predicted classes, a CPU tensor.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    confusion = None
    confidences, hits, preds = [], [], []
    for i in range(0, len(x), batch_size):
        xb = to_float(x[i:i + batch_size].to(device))
        yb = y[i:i + batch_size].to(device)
        out = model(xb)
        total_loss += float(F.cross_entropy(out, yb, reduction="sum")) / (yb[0].numel() if task == "segmentation" else 1)
        pred = out.argmax(1)
        if task == "classification":
            correct += int((pred == yb).sum())
            confidences.append(out.float().softmax(1).amax(1).cpu())
            hits.append((pred == yb).cpu())
            preds.append(pred.cpu())
        else:
            k = num_classes or out.shape[1]
            c = torch.bincount((yb * k + pred).flatten(), minlength=k * k).view(k, k).cpu()
            confusion = c if confusion is None else confusion + c
        n += len(yb)
    model.train(was_training)
    if task == "classification":
        scores = {"loss": total_loss / n, "acc": correct / n,
                  "ece": calibration_error(torch.cat(confidences), torch.cat(hits))}
        if predictions:
            scores["predictions"] = torch.cat(preds)
        return scores
    return {"loss": total_loss / n, **segmentation_scores(confusion)}


def calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> float:
    r"""Expected calibration error (Guo et al., ICML 2017) with ``bins`` equal-width confidence bins:

    .. math:: \mathrm{ECE} = \sum_b \frac{|B_b|}{n}\,\big|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\big|,

    where bin :math:`b` holds the predictions with confidence in :math:`((b-1)/\text{bins},\, b/\text{bins}]`.
    ``confidence``: the probability of the predicted class; ``correct``: whether the prediction is right.
    """
    if bins < 1:
        raise ValueError(f"Invalid bins {bins}: use at least 1 bin.")
    confidence, correct = confidence.double().flatten(), correct.double().flatten()
    if confidence.numel() != correct.numel() or confidence.numel() == 0:
        raise ValueError(f"confidence ({confidence.numel()}) and correct ({correct.numel()}) must be non-empty and "
                         "of the same length.")
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1   # (b-1)/bins < c <= b/bins -> b-1; c = 0 -> 0
    count = torch.bincount(index, minlength=bins).double()
    gap = torch.bincount(index, weights=correct - confidence, minlength=bins).abs()
    return float(gap.sum() / count.sum())


def encode_predictions(pred: torch.Tensor, num_classes: int) -> str:
    """Predicted classes as a compact string for a JSON record: one digit per example when there
    are at most 10 classes (2000 test images take 2 kB), else comma-separated numbers."""
    values = pred.flatten().tolist()
    return "".join(map(str, values)) if num_classes <= 10 else ",".join(map(str, values))


def decode_predictions(text: str) -> torch.Tensor:
    """Inverse of :func:`encode_predictions`."""
    if "," in text or not text:
        return torch.tensor([int(v) for v in text.split(",") if v], dtype=torch.long)
    return torch.tensor([int(c) for c in text], dtype=torch.long)


def environment_info(device) -> dict:
    device = torch.device(device)
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
            "samlib": __version__, "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info




def training_batches(config: TrainConfig, x: torch.Tensor, y: torch.Tensor, device) -> "Batches":
    """The shuffled training minibatches of ``config`` (its seed, batch size and augmentation), as
    :func:`train` draws them; :func:`samlib.diagnostics.train_with_probe` trains on the same ones."""
    augment = None
    if config.augment is not None:
        def augment(xb, spec=AUGMENTATIONS[config.augment]):
            return augment_batch(xb, **spec)
    return Batches(x, y, config.batch_size, shuffle=True, seed=config.seed, device=device, drop_last=True,
                   augment=augment)

def train(config: TrainConfig, train_data: tuple, test_data: tuple | None = None, val_data: tuple | None = None,
          num_classes: int = 10, in_channels: int | None = None, record_path: str | os.PathLike | None = None,
          progress: bool = True, on_epoch: Callable[[int, dict, nn.Module], None] | None = None,
          extra_record: dict | None = None) -> dict:
    """Train one model; return its record ``{"config", "history", "final", "environment", "model"}``.

    ``train_data`` is ``(x, y)`` or ``(x, y, clean_y)``: with clean labels (label-noise runs) the
    history also tracks accuracy on the clean training labels and how many flipped labels the
    model has memorized (classification: with its chance level, :func:`classification_memorization`).
    ``test_data``/``val_data`` are ``(x, y)``; the test labels are clean.

    Classification records also hold, per evaluation, the NLL (``*_loss``) and calibration error
    (``*_ece``); in ``final``, the summaries of :func:`_trajectory_summary` (best epoch, validation
    early stopping, mean of the last evaluations); and ``test_predictions``, the final model's
    predicted class per test example (:func:`decode_predictions`). SAM-type runs on one process
    without AMP or m-sharpness log, per epoch, the mean over steps of the achieved minibatch ascent
    ``ascent`` = L_B(w+eps) - L_B(w), its first-order part ``ascent_linear`` = g_B . eps, and
    ``eps_dim`` = (sum eps_i^2)^2 / (D sum eps_i^4), the participation ratio of eps over its D coordinates
    (1: spread evenly; 1/D: a single coordinate).
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
    batches = training_batches(config, x, y, device)
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
    test_predictions = None
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=f"{config.method} seed {config.seed}", leave=False)
    try:
        for epoch in range(config.epochs):
            model.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            ascent = torch.zeros(4, device=device, dtype=torch.float64)  # sums of the step's ascent terms, steps
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
                elif world_size == 1:  # single process: the same step as sam_step, and what it achieved
                    loss, out = _sam_step_with_ascent(model, opt, loss_fn, xb, yb, ascent)
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
            if int(ascent[3]):
                row.update(zip(("ascent", "ascent_linear", "eps_dim"), (ascent[:3] / ascent[3]).tolist()))
            evaluating = (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs
            scores = {}
            for name, data in (("val", val_data), ("test", test_data)):
                if data is not None and evaluating:
                    scores[name] = evaluate(model, data[0], data[1], config.task, device=device, num_classes=num_classes,
                                            predictions=config.task == "classification" and name == "test")
                    row.update({f"{name}_{k}": v for k, v in scores[name].items() if k != "predictions"})
            if clean is not None and evaluating:
                if config.task == "classification":
                    reference = (test_data[1], scores["test"]["predictions"]) if "test" in scores else None
                    row.update(classification_memorization(_predict(model, x, device), y, clean, num_classes, reference))
                else:
                    row.update(_segmentation_memorization(model, x, y, clean, device, num_classes))
            if "test" in scores and epoch + 1 == config.epochs and config.task == "classification":
                test_predictions = encode_predictions(scores["test"]["predictions"], num_classes)
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
    if config.task == "classification":
        history[-1].update(_trajectory_summary(history))
    record = {"config": dataclasses.asdict(config), "history": history, "final": history[-1],
              "environment": environment_info(device), **(extra_record or {})}
    if test_predictions is not None:
        record["test_predictions"] = test_predictions
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


TAIL_EVALUATIONS = 3  # ``val_acc_tail``: validation accuracy averaged over this many last evaluations


def _trajectory_summary(history: list[dict]) -> dict:
    """Classification summaries of a run's evaluations, stored in its final row:

    * ``val_acc_tail``: mean validation accuracy over the last ``TAIL_EVALUATIONS`` evaluations
      (less noisy than the last one alone; the course selects hyperparameters on it);
    * ``test_acc_best``, ``epoch_test_best``: the best test accuracy over the evaluations and its
      epoch (an *oracle*: it looks at the test set, so it only shows how much early stopping could give);
    * ``test_acc_val_best``, ``epoch_val_best``: test accuracy at the evaluation with the best
      validation accuracy (validation early stopping; the first such epoch on ties).
    """
    out = {}
    val = [h for h in history if "val_acc" in h]
    test = [h for h in history if "test_acc" in h]
    if val:
        out["val_acc_tail"] = sum(h["val_acc"] for h in val[-TAIL_EVALUATIONS:]) / len(val[-TAIL_EVALUATIONS:])
    if test:
        best = max(test, key=lambda h: h["test_acc"])
        out.update(test_acc_best=best["test_acc"], epoch_test_best=best["epoch"])
    both = [h for h in history if "val_acc" in h and "test_acc" in h]
    if both:
        best = max(both, key=lambda h: h["val_acc"])
        out.update(test_acc_val_best=best["test_acc"], epoch_val_best=best["epoch"])
    return out


def _sam_step_with_ascent(model: nn.Module, opt, loss_fn, x, y, ascent: torch.Tensor):
    """One SAM step on one process, exactly as :func:`samlib.distributed.sam_step` takes it, that also
    adds to ``ascent`` (no host sync) what the perturbation achieved on this minibatch:
    ``[L_B(w+eps) - L_B(w), g_B . eps, (sum eps^2)^2 / (D sum eps^4), 1]``.
    """
    out = model(x)
    loss = loss_fn(out, y)
    loss.backward()
    params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
    w = [p.detach().clone() for p in params]
    opt.first_step(zero_grad=False)                       # p.grad still holds g_B; p now holds w + eps
    eps = torch._foreach_sub([p.detach() for p in params], w)
    linear = sum(torch.dot(p.grad.flatten().double(), e.flatten().double()) for p, e in zip(params, eps))
    sq = sum(e.double().square().sum() for e in eps)
    quartic = sum(e.double().square().square().sum() for e in eps)
    dim = sum(e.numel() for e in eps)
    opt.zero_grad()
    with frozen_bn_stats(model):
        perturbed_loss = loss_fn(model(x), y)
        perturbed_loss.backward()
    opt.second_step(zero_grad=True)
    spread = torch.where(quartic > 0, sq * sq / (dim * quartic.clamp_min(1e-300)), torch.zeros_like(sq))
    ascent += torch.stack([(perturbed_loss.detach() - loss.detach()).double(), linear, spread, torch.ones_like(sq)])
    return loss.detach(), out.detach()


@torch.no_grad()
def _predict(model, x, device, batch_size=1024) -> torch.Tensor:
    """Predicted classes of ``x`` in eval mode (CPU tensor)."""
    was_training = model.training
    model.eval()
    preds = torch.cat([model(to_float(x[i:i + batch_size].to(device))).argmax(1).cpu()
                       for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return preds


def classification_memorization(pred: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor, num_classes: int,
                                reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    r"""Accuracy on the clean and on the noisy training labels, the memorized fraction of flipped
    labels, and that fraction's chance level.

    ``memorized`` is the fraction of flipped training examples predicted with their *noisy* label.
    A network that fits none of the flips individually still hits some by chance: it treats a
    flipped image like an image it never trained on. ``memorized_chance`` is the expected hit
    rate of such a network, :math:`rac1{|F|}\sum_{i\in F} R[c_i, 	ilde y_i]`, where :math:`F` are
    the flipped examples, :math:`c_i` the clean and :math:`	ilde y_i` the noisy label, and
    :math:`R[c, k]` the rate at which the network predicts class :math:`k` on held-out images of
    class :math:`c`: from ``reference = (labels, predictions)`` of a clean held-out set (the test
    set in :func:`train`), else from the training examples whose labels were not flipped. Under
    symmetric noise it is about :math:`(1-a)/(K-1)` at held-out accuracy :math:`a`; under pair-flip
    noise it is the held-out rate of the flip's confusion. ``memorized_excess`` = ``memorized`` -
    ``memorized_chance``.
    """
    pred, noisy, clean = pred.cpu().flatten(), noisy.cpu().flatten(), clean.cpu().flatten()
    flipped = noisy != clean
    out = {"train_clean_acc": float((pred == clean).float().mean()),
           "train_noisy_acc": float((pred == noisy).float().mean())}
    if not flipped.any():
        return out
    ref_labels, ref_pred = (reference if reference is not None else (clean[~flipped], pred[~flipped]))
    ref_labels, ref_pred = ref_labels.cpu().flatten(), ref_pred.cpu().flatten()
    k = num_classes
    counts = torch.bincount(ref_labels * k + ref_pred, minlength=k * k).view(k, k).double()
    rates = counts / counts.sum(1, keepdim=True).clamp_min(1)
    out["memorized"] = float((pred[flipped] == noisy[flipped]).float().mean())
    out["memorized_chance"] = float(rates[clean[flipped], noisy[flipped]].mean())
    out["memorized_excess"] = out["memorized"] - out["memorized_chance"]
    return out
