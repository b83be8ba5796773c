"""Chapter 07's pilot: is InfoSAM's perturbation better aligned with the full-data gradient *along training*?

One InfoSAM run (seed 0) in the setting of chapter 07's grid (1200 bundled Fashion-MNIST training images with
40% symmetric label noise, width-16 SmallCNN, lr 0.05, momentum 0.9, weight decay 5e-4, cosine schedule). Every
``--every`` steps, at the same weights w and before the step, it measures the cosine with the full-data gradient
(all training images, their noisy labels, BatchNorm in train mode with frozen running statistics) of

* SAM's direction g_t (the minibatch gradient),
* InfoSAM's direction P_t g_t with today's gain P_t = m_t^2/(m_t^2 + v_t) (statistics that already contain g_t),
* the derivation-exact direction P_{t-1} g_t (gain from the statistics before the batch),
* the running mean m_t (VaSSO with theta = 1 - beta = 0.1 follows it),

and, at 10%, 50% and 90% of training, how much the running variance v_t overstates the minibatch variance at
fixed w (sum v_t / sum Var_fixed-w(g_B), 40 minibatches; 1 + drift, ideally about 1.05).
Adapted from the review's scripts/align_train.py. Run from the project root (1-2 CPU-minutes each):

    SAMLIB_MODE=standard OMP_NUM_THREADS=1 python chapters/results/07_classification/pilot/alignment.py --batch-size 32 --every 12
    SAMLIB_MODE=standard OMP_NUM_THREADS=1 python chapters/results/07_classification/pilot/alignment.py --batch-size 128 --every 3
"""
import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from samlib import experiments as E
from samlib.data import Batches, to_float
from samlib.models import build_model
from samlib.optim import InfoSAM, frozen_bn_stats

parser = argparse.ArgumentParser()
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--rho", type=float, default=0.1)
parser.add_argument("--every", type=int, default=15)
parser.add_argument("--out", default=None)
args = parser.parse_args()
torch.set_num_threads(1)
start = time.process_time()

grid = E.classification_grid("b32")     # run with SAMLIB_MODE=standard: the committed grid's data, seed 0
data = E.prepare_data(E.run_data(grid, 0), grid.noise_rates[0])
x, y, _ = data["train"]
X = to_float(x)
torch.manual_seed(0)
model = build_model("small_cnn", 1, 10, width=16)
params = list(model.parameters())
opt = InfoSAM(params, torch.optim.SGD, rho=args.rho, beta=0.9, lr=0.05, momentum=0.9, weight_decay=5e-4)
batches = Batches(x, y, args.batch_size, shuffle=True, seed=0, drop_last=True)
total = args.epochs * len(batches)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def gain(m, v):
    return m * m / (m * m + v).clamp_min(torch.finfo(m.dtype).tiny)


def full_gradient():
    with frozen_bn_stats(model):
        return flat(torch.autograd.grad(F.cross_entropy(model(X), y), params))


def fixed_w_variance(n=40, seed=0):
    gen, grads = torch.Generator().manual_seed(seed), []
    with frozen_bn_stats(model):
        for _ in range(n):
            idx = torch.randperm(len(X), generator=gen)[:args.batch_size]
            grads.append(flat(torch.autograd.grad(F.cross_entropy(model(X[idx]), y[idx]), params)))
    return torch.stack(grads).var(0)


rows, checks, step = [], [], 0
check_steps = {int(total * f) for f in (0.1, 0.5, 0.9)}
for epoch in range(args.epochs):
    model.train()
    for xb, yb in batches:
        F.cross_entropy(model(xb), yb).backward()
        measure = step % args.every == 0 and step > 20
        if measure or step in check_steps:
            g_t, g_full = flat([p.grad for p in params]).clone(), full_gradient()
            m_prev = flat([opt.state[p]["m"] for p in params]).clone()
            v_prev = flat([opt.state[p]["v"] for p in params]).clone()
            variance = fixed_w_variance() if step in check_steps else None   # at w, before the step
        opt.first_step(zero_grad=True)                                   # advances m, v with g_t
        if measure or step in check_steps:
            m, v = flat([opt.state[p]["m"] for p in params]), flat([opt.state[p]["v"] for p in params])
            P = gain(m, v)
            if measure:
                rows.append({"step": step, "sam": cos(g_t, g_full), "infosam": cos(P * g_t, g_full),
                             "infosam_previous": cos(gain(m_prev, v_prev) * g_t, g_full), "ema": cos(m, g_full),
                             "mean_gain": float(P.mean())})
            if variance is not None:
                checks.append({"step": step, "v_over_fixed_w_variance": float(v.sum() / variance.sum())})
        with frozen_bn_stats(model):
            F.cross_entropy(model(xb), yb).backward()
        opt.second_step(zero_grad=True)
        sched.step()
        step += 1


def mean_se(values):
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


thirds = []
for lo, hi in ((0, total // 3), (total // 3, 2 * total // 3), (2 * total // 3, total)):
    part = [r for r in rows if lo <= r["step"] < hi]
    thirds.append({"steps": [lo, hi], **{k: statistics.fmean(r[k] for r in part)
                                         for k in ("sam", "infosam", "infosam_previous", "ema", "mean_gain")}})
paired = {k: dict(zip(("mean", "se"), mean_se([r[k] - r["sam"] for r in rows])))
          for k in ("infosam", "infosam_previous", "ema")}
result = {"batch_size": args.batch_size, "epochs": args.epochs, "rho": args.rho, "every": args.every, "steps": total,
          "rows": rows, "thirds": thirds, "paired_minus_sam": paired, "drift_checks": checks,
          "cpu_seconds": time.process_time() - start}
out = Path(args.out or Path(__file__).with_name(f"alignment_b{args.batch_size}.json"))
out.write_text(json.dumps(result, indent=1), encoding="utf-8")
for t in thirds:
    print(t)
print(paired, checks, f"{result['cpu_seconds']:.0f} CPU-s")
