"""Chapter 05's precomputed measurements, and the alignment-vs-batch-size figure for lectures.

Chapter 05's setting (2,000 Fashion-MNIST images, a width-16 small CNN after 3 epochs of SGD at
label-noise rates 0, 20% and 40%, fixed weights, rho = 0.05):

* ``alignment``: cos(eps_batch, eps_full) and the full-data ascent of SAM's minibatch perturbation,
  16 minibatches per point (mean and standard error), at batch sizes 16..512, with BatchNorm in
  eval mode (running statistics; what the chapter computes live, with the same seeds) and in
  train mode (batch statistics, what SAM's first pass sees in training); plus the noise-to-signal
  ratio tr Sigma_64/||g||^2 for the heuristic;
* ``curvature``: the first-/second-order split g'eps, eps'H eps/2 of the full-data ascent of
  eps_full and of 6 minibatch perturbations (batch 128) at rho = 0.005, 0.05, 0.15.

It writes ``results.json`` and ``alignment_vs_batch.png`` (a clean figure for slides). Run from the
project root (about 12 CPU-minutes on one thread)::

    OMP_NUM_THREADS=1 python chapters/results/05_gradient_noise/make_results.py
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from samlib import diagnostics as G
from samlib.data import add_label_noise, load_fashion_mnist, to_float
from samlib.train import TrainConfig, train

HERE = Path(__file__).resolve().parent
#: Okabe-Ito colours (distinguishable with the common colour-vision deficiencies), one per noise rate.
COLOURS = {0.0: "#0072B2", 0.2: "#E69F00", 0.4: "#CC79A7"}
MARKERS = {0.0: "o", 0.2: "s", 0.4: "^"}

SETTINGS = {
    "standard": dict(n_train=2000, width=16, epochs=3, rates=[0.0, 0.2, 0.4], batches=[16, 32, 64, 128, 256, 512],
                     n_batches=16, rho=0.05, noise_batches=32, curvature_rates=[0.0, 0.4],
                     curvature_rhos=[0.005, 0.05, 0.15], curvature_batches=6),
    "quick": dict(n_train=256, width=4, epochs=1, rates=[0.0, 0.4], batches=[16, 128], n_batches=3, rho=0.05,
                  noise_batches=4, curvature_rates=[0.4], curvature_rhos=[0.05], curvature_batches=1),
}


def trained_models(s) -> dict:
    """The chapter's models (the same calls as chapter 05, cell "models")."""
    x_all, y_all = load_fashion_mnist("train", subset=True)
    x, y_clean = to_float(x_all[:s["n_train"]]), y_all[:s["n_train"]]
    models = {}
    for rate in s["rates"]:
        labels = add_label_noise(y_clean, rate, 10, seed=0)[0] if rate > 0 else y_clean
        cfg = TrainConfig(method="SGD", model="small_cnn", model_kwargs={"width": s["width"]}, epochs=s["epochs"],
                          batch_size=64, lr=0.05, device="cpu", seed=0)
        models[rate] = (train(cfg, (x, labels), progress=False)["model"], labels)
    return x, models


def _stats(t) -> list:
    t = torch.as_tensor(t, dtype=torch.float64)
    return [round(float(t.mean()), 5), round(float(t.std() / len(t) ** 0.5), 5) if len(t) > 1 else None]


def alignment(s, x, models) -> list:
    rows = []
    for train_mode in (False, True):
        for rate, (model, labels) in models.items():
            stats = G.gradient_noise(model, x, labels, batch_size=64, n_batches=s["noise_batches"], seed=1,
                                     train_mode=train_mode)
            nsr = float(stats["var"].sum() / (stats["full"] ** 2).sum())
            for B in s["batches"]:
                out = G.adversary_alignment(model, x, labels, "SAM", rho=s["rho"], batch_size=B,
                                            n_batches=s["n_batches"], warmup=0, seed=B, train_mode=train_mode)
                rows.append({"train_mode": train_mode, "noise": rate, "batch": B, "nsr64": round(nsr, 5),
                             "cos": _stats(out["cos"]), "ratio": _stats(out["ascent"] / out["full_ascent"]),
                             "ascent": _stats(out["ascent"]), "full_ascent": round(out["full_ascent"], 5)})
                print(rows[-1], flush=True)
    return rows


def curvature(s, x, models) -> list:
    rows = []
    for rate in s["curvature_rates"]:
        model, labels = models[rate]
        params = [p for p in model.parameters() if p.requires_grad]
        loss = G.data_loss(model, x, labels)
        g = G.flat_grad(loss, params)
        gnorm = float(sum((t * t).sum() for t in g) ** 0.5)
        gen = torch.Generator().manual_seed(7)
        batch_dirs = []
        for _ in range(s["curvature_batches"]):
            idx = torch.randperm(len(x), generator=gen)[:128]
            gb = G._batch_grad(model, torch.nn.functional.cross_entropy, x, labels, params, idx, False)
            batch_dirs.append([t.detach() for t in gb])
        for rho in s["curvature_rhos"]:
            for name, d in [("full", g)] + [(f"batch {k}", gb) for k, gb in enumerate(batch_dirs)]:
                n = float(sum((t * t).sum() for t in d) ** 0.5)
                eps = [t * (rho / n) for t in d]
                out = G.ascent_decomposition(loss, params, eps, grad=g)
                rows.append({"noise": rate, "rho": rho, "eps": name, "grad_norm": round(gnorm, 5),
                             **{k: round(v, 6) for k, v in out.items()}})
                print(rows[-1], flush=True)
    return rows


def figure(rows, path, n_train, n_batches):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, train_mode in zip(axes, (False, True)):
        for rate in sorted({r["noise"] for r in rows}):
            rr = [r for r in rows if r["noise"] == rate and r["train_mode"] == train_mode]
            ax.errorbar([r["batch"] for r in rr], [r["cos"][0] for r in rr], yerr=[r["cos"][1] or 0 for r in rr],
                        marker=MARKERS.get(rate, "o"), color=COLOURS.get(rate), capsize=3,
                        label=f"label noise {rate:.0%}")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="batch size B", title="BatchNorm in " + ("train mode (what SAM sees)" if train_mode
                                                              else "eval mode (running statistics)"))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(r"alignment $\cos(\epsilon_{B}, \epsilon_{\mathrm{full}})$")
    axes[0].legend(loc="upper left")
    fig.suptitle(f"SAM's minibatch adversary vs the full-data one ({n_train:,} images, "
                 f"mean ± SE over {n_batches} batches)")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings (what the test runs)")
    ap.add_argument("--out", default=str(HERE), help="folder for results.json and the figure")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    s = SETTINGS["quick" if args.quick else "standard"]
    t0 = time.process_time()
    x, models = trained_models(s)
    result = {"settings": s, "command": "OMP_NUM_THREADS=1 python chapters/results/05_gradient_noise/make_results.py"
              + (" --quick" if args.quick else ""), "alignment": alignment(s, x, models),
              "curvature": curvature(s, x, models)}
    result["environment"] = {"python": sys.version.split()[0], "torch": torch.__version__,
                             "processor": platform.processor() or platform.machine(),
                             "cpu_s": round(time.process_time() - t0, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    figure(result["alignment"], out / "alignment_vs_batch.png", s["n_train"], s["n_batches"])
    print(f"wrote {out / 'results.json'} ({result['environment']['cpu_s']} CPU-s)")


if __name__ == "__main__":
    main()
