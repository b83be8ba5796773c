"""Lecture 2's bridge from chapter 03 to chapter 06: minibatch adversaries are misaligned.

Chapter 05's standard-mode setting (2,000 Fashion-MNIST images, a width-16 small CNN after 3 epochs
of SGD with batch 64 and lr 0.05, trained on labels with noise rate 0, 20% and 40%; fixed weights,
rho = 0.05, BatchNorm in eval mode) measured with ``samlib.diagnostics.adversary_alignment``:
cos(eps_batch, eps_full) of SAM's minibatch perturbation, 16 minibatches per batch size (mean and
standard error). The lecture deck plots these numbers (``tools/make_decks.py`` embeds them), so the
lecture never runs chapter 05 live. Run from the project root (about 4 CPU-minutes on one thread)::

    OMP_NUM_THREADS=1 python tools/lectures/bridge_alignment.py

It writes ``tools/lectures/bridge_alignment.json``. ``--quick`` runs a tiny version (seconds) that
writes to ``--out`` instead (the test uses it).
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
SETTINGS = {
    "standard": dict(n_train=2000, width=16, epochs=3, rates=[0.0, 0.2, 0.4], batches=[16, 32, 64, 128, 256, 512],
                     n_batches=16, rho=0.05),
    "quick": dict(n_train=256, width=4, epochs=1, rates=[0.0, 0.4], batches=[16, 128], n_batches=3, rho=0.05),
}


def measure(s: dict) -> list[dict]:
    """One row per (noise rate, batch size): mean and standard error of the alignment."""
    x_all, y_all = load_fashion_mnist("train", subset=True)
    x, y_clean = to_float(x_all[:s["n_train"]]), y_all[:s["n_train"]]
    rows = []
    for rate in s["rates"]:
        labels = add_label_noise(y_clean, rate, 10, seed=0)[0] if rate > 0 else y_clean
        cfg = TrainConfig(method="SGD", model="small_cnn", model_kwargs={"width": s["width"]}, epochs=s["epochs"],
                          batch_size=64, lr=0.05, device="cpu", seed=0)
        model = train(cfg, (x, labels), progress=False)["model"]
        for batch in s["batches"]:
            out = G.adversary_alignment(model, x, labels, "SAM", rho=s["rho"], batch_size=batch,
                                        n_batches=s["n_batches"], warmup=0, seed=batch)
            cos = torch.as_tensor(out["cos"], dtype=torch.float64)
            rows.append({"noise": rate, "batch": batch, "cos": round(float(cos.mean()), 4),
                         "se": round(float(cos.std() / len(cos) ** 0.5), 4)})
            print(rows[-1], flush=True)
    return rows


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny run (seconds), for tests")
    ap.add_argument("--out", type=Path, default=HERE / "bridge_alignment.json")
    args = ap.parse_args(argv)
    s = SETTINGS["quick" if args.quick else "standard"]
    torch.manual_seed(0)
    start = time.process_time()
    rows = measure(s)
    record = {"what": "cos(eps_batch, eps_full) of SAM's minibatch perturbation (chapter 05's setting)",
              "settings": s,
              "command": "OMP_NUM_THREADS=1 python tools/lectures/bridge_alignment.py" + (" --quick" if args.quick else ""),
              "rows": rows,
              "environment": {"python": platform.python_version(), "torch": torch.__version__,
                              "machine": platform.machine(), "threads": torch.get_num_threads(),
                              "cpu_seconds": round(time.process_time() - start, 1)}}
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({record['environment']['cpu_seconds']} CPU s)", file=sys.stderr)
    return args.out


if __name__ == "__main__":
    main()
