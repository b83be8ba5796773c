"""Chapter 08's pilot: one seed of a few segmentation settings (section 4 of the chapter).

Run from the project root, one thread per run, e.g.::

    BALANCE=1 N=2000 EPOCHS=30 WIDTH=8 LR=0.05 EVAL=3 RUNS=SGD:0,SGD:0.4,SAM:0.4:0.05 \
        OMP_NUM_THREADS=1 python chapters/results/08_segmentation/pilot.py

``RUNS`` lists ``method:noise[:rho]``. Scenes: 5 garment super-classes on 32 x 32 canvases (``BALANCE=1``: every
super-class equally frequent), training scenes and noise from seed 0 (80/20 train/validation split), 300 clean test
scenes from seed 1001. Prints the garment-only mIoU curve (test and noisy validation), per-class test IoU, the
clean-training-mask fit, memorized / chance / excess, and the CPU seconds of each run. ``pilot.log`` holds the
output of the runs the chapter's pilot table reports.
"""
import os
import resource
import time

import torch

from samlib.data import fashion_scenes, load_fashion_mnist, split_validation
from samlib.train import TrainConfig, history_peak, train, trivial_segmentation_scores

torch.set_num_threads(1)
N, EPOCHS, WIDTH = int(os.environ.get("N", 2000)), int(os.environ.get("EPOCHS", 30)), int(os.environ.get("WIDTH", 8))
LR, BATCH, EVAL = float(os.environ.get("LR", 0.05)), int(os.environ.get("BATCH", 16)), int(os.environ.get("EVAL", 3))
BALANCE = bool(int(os.environ.get("BALANCE", 1)))
RUNS = os.environ.get("RUNS", "SGD:0,SGD:0.4").split(",")
scenes = dict(size=32, labels="superclasses", balance=BALANCE)
xt, yt = fashion_scenes(300, 1001, source=load_fashion_mnist("test", subset=True), **scenes)
train_garments = load_fashion_mnist("train", subset=True)
for spec in RUNS:
    method, noise, *rho = spec.split(":")
    x, y, clean = fashion_scenes(N, 0, source=train_garments, mask_noise=float(noise), return_clean=True, **scenes)
    tr, va = split_validation(N, 0.2, 3)
    majority = int(torch.bincount(clean[tr][clean[tr] > 0]).argmax())
    base = trivial_segmentation_scores(yt, majority, 6)
    config = TrainConfig(method=method, hparams={"rho": float(rho[0])} if rho else {}, model="unet",
                         model_kwargs={"width": WIDTH}, task="segmentation", epochs=EPOCHS, batch_size=BATCH, lr=LR,
                         eval_every=EVAL, device="cpu", seed=0)
    t0, c0 = time.time(), time.process_time()
    h = train(config, (x[tr], y[tr], clean[tr]), (xt, yt), (x[va], y[va]), num_classes=6, progress=False)["history"]
    cpu, wall = time.process_time() - c0, time.time() - t0
    p = history_peak(h, "test_garment_miou", select="val_garment_miou")
    f = h[-1]
    print(f"== {spec} N={N} width={WIDTH} epochs={EPOCHS} batch={BATCH} lr={LR} balance={int(BALANCE)}: {cpu:.0f} s CPU "
          f"({wall:.0f} s wall) | trivial baseline {100 * base['garment_miou']:.1f} | garment mIoU final "
          f"{100 * p['final']:.1f}, peak {100 * p['peak']:.1f} @ {p['peak_epoch']}, early-stopped {100 * p['stopped']:.1f} "
          f"@ {p['stopped_epoch']} | background IoU {100 * f['test_background_iou']:.1f}"
          + (f" | memorized {100 * f['memorized']:.1f}, chance {100 * f['memorized_chance']:.1f}" if "memorized" in f else ""),
          flush=True)
    for r in h:
        if "test_garment_miou" in r:
            print(f"   epoch {r['epoch']:3d} loss {r['train_loss']:.3f} test {100 * r['test_garment_miou']:.1f} "
                  f"val {100 * r['val_garment_miou']:.1f} | per class " + " ".join(f"{100 * v:.0f}" for v in r["test_class_iou"][1:])
                  + f" | fit {100 * r['train_clean_garment_miou']:.1f}"
                  + (f" | memorized {100 * r['memorized']:.1f} chance {100 * r['memorized_chance']:.1f}" if "memorized" in r else ""),
                  flush=True)
