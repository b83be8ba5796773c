"""Chapter 06's precomputed measurements: the design space of noise-aware adversaries.

Two parts, each written to ``<out>/<part>.json`` (the chapter reads them; ``tests/test_diagnostics.py``
regenerates both in quick mode and checks they have the committed structure):

* ``design_space``: at fixed weights (a small CNN after 3 epochs of SGD on 2,000 Fashion-MNIST
  images), every direction of :data:`samlib.diagnostics.DESIGN_SPACE` plus inverse variance and
  the oracle gain, at batch 128 and 32, 40% label noise and clean, eval-mode BatchNorm (and train
  mode at 40% noise); 16 independent streams of 20 warm-up batches + 1 evaluated batch each.
* ``in_training``: along a real InfoSAM run (the same data at 40% noise, rho = 0.05, beta = 0.9,
  lr 0.05 cosine, 15 epochs) at batch 128 and 32, the same directions measured every k steps at the
  same weights (train-mode BatchNorm), with InfoSAM's internals, the noise estimate's inflation and
  the first-/second-order split of the ascent at three checkpoints.

Run from the project root (one thread of a shared machine: design_space 554 CPU-s; in_training 365 CPU-s
for batch 128, and the batch-32 run, stopped unfinished after 190 CPU-s, is not in the committed record)::

    OMP_NUM_THREADS=1 python chapters/results/06_infosam/make_results.py design_space
    OMP_NUM_THREADS=1 python chapters/results/06_infosam/make_results.py in_training
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
    "standard": dict(n_train=2000, width=16, epochs=3, rho=0.05, beta=0.9, n_streams=16, warmup=20,
                     oracle_batches=64, batches=[128, 32], train_epochs=15, every={128: 4, 32: 16},
                     inflation_batches=64),
    "quick": dict(n_train=256, width=4, epochs=1, rho=0.05, beta=0.9, n_streams=3, warmup=3,
                  oracle_batches=8, batches=[64, 32], train_epochs=1, every={64: 2, 32: 3},
                  inflation_batches=4),
}


def _data(s, rate):
    x_all, y_all = load_fashion_mnist("train", subset=True)
    x, y = to_float(x_all[:s["n_train"]]), y_all[:s["n_train"]]
    return x, (add_label_noise(y, rate, 10, seed=0)[0] if rate > 0 else y)


def _stats(values) -> list:
    t = torch.as_tensor(values, dtype=torch.float64)
    return [round(float(t.mean()), 5), round(float(t.std() / len(t) ** 0.5), 5) if len(t) > 1 else None]


def design_space(s, save=lambda rows: None) -> list:
    rows = []
    for rate in (0.4, 0.0):
        x, y = _data(s, rate)
        model = train(TrainConfig(method="SGD", model="small_cnn", model_kwargs={"width": s["width"]},
                                  epochs=s["epochs"], batch_size=64, lr=0.05, device="cpu", seed=0), (x, y),
                      progress=False)["model"]
        for train_mode in ((False, True) if rate > 0 else (False,)):
            for B in s["batches"]:
                t0 = time.process_time()
                out = G.design_space_alignment(model, x, y, rho=s["rho"], beta=s["beta"], batch_size=B,
                                               n_streams=s["n_streams"], warmup=s["warmup"], seed=0,
                                               train_mode=train_mode, oracle_batches=s["oracle_batches"])
                sam = out["cos"]["g"]
                rows.append({
                    "noise": rate, "batch": B, "train_mode": train_mode, "loss": round(out["loss"], 5),
                    "full_ascent": round(out["full_ascent"], 5),
                    "cos": {k: _stats(v) for k, v in out["cos"].items()},
                    "ascent": {k: _stats(v) for k, v in out["ascent"].items()},
                    "cos_minus_sam": {k: _stats(v - sam) for k, v in out["cos"].items()},
                    "cos_raw": {k: [round(float(c), 4) for c in v] for k, v in out["cos"].items()},
                    "mean_P": {k: _stats(v) for k, v in out["mean_P"].items()},
                    "inflation": _stats(out["inflation"]), "expected_inflation": round(out["expected_inflation"], 5),
                    "cpu_s": round(time.process_time() - t0, 1)})
                print(f"noise {rate} batch {B} train_mode {train_mode}: SAM {rows[-1]['cos']['g']}, "
                      f"InfoSAM {rows[-1]['cos']['g*P_current']}, m {rows[-1]['cos']['m']} "
                      f"({rows[-1]['cpu_s']} s)", flush=True)
    return rows


def in_training(s, save=lambda rows: None) -> list:
    x, y = _data(s, 0.4)
    out = []
    for B in s["batches"]:
        t0 = time.process_time()
        cfg = TrainConfig(method="InfoSAM", hparams={"rho": s["rho"], "beta": s["beta"]}, model="small_cnn",
                          model_kwargs={"width": s["width"]}, epochs=s["train_epochs"], batch_size=B, lr=0.05,
                          device="cpu", seed=0)
        total = s["train_epochs"] * (len(x) // B)
        checks = sorted({int(total * f) for f in (0.1, 0.5, 0.9)})
        res = G.train_with_probe(cfg, (x, y), probe={"beta": s["beta"], "every": s["every"][B], "start": 1,
                                                    "inflation_at": checks, "curvature_at": checks,
                                                    "inflation_batches": s["inflation_batches"]})
        probe = res["probe"]
        round_dict = lambda d: {k: round(v, 5) for k, v in d.items()}  # noqa: E731
        records = [{"step": r["step"], "lr": round(r["lr"], 5), "loss": round(r["loss"], 5),
                    "cos": round_dict(r["cos"]), "ascent": round_dict(r["ascent"]),
                    "participation": round_dict(r["participation"]), "mean_P": round_dict(r["mean_P"]),
                    "frac_P_below_0.1": round_dict(r["frac_P_below_0.1"]), "layer_mean_P": round_dict(r["layer_mean_P"])}
                   for r in probe.records]
        out.append({"batch": B, "steps": total, "every": s["every"][B], "train_loss": [round(v, 4) for v in res["train_loss"]],
                    "records": records, "summary": probe.summary(3),
                    "inflation": [round_dict(r) for r in probe.inflation],
                    "curvature": [{"step": c["step"], **{k: round_dict(v) for k, v in c.items() if k != "step"}}
                                  for c in probe.curvature],
                    "cpu_s": round(time.process_time() - t0, 1)})
        print(f"batch {B}: {len(records)} measurements, {out[-1]['cpu_s']} s; summary {out[-1]['summary']}", flush=True)
        save(out)                     # written after each batch size: a run stopped later keeps what it finished
    return out


PARTS = {"design_space": design_space, "in_training": in_training}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=list(PARTS))
    ap.add_argument("--quick", action="store_true", help="tiny settings (what the test runs)")
    ap.add_argument("--out", default=str(HERE), help="folder for <part>.json (default: beside this script)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    s = SETTINGS["quick" if args.quick else "standard"]
    t0 = time.process_time()
    result = {"part": args.part, "settings": {k: (v if k != "every" else {str(b): e for b, e in v.items()})
                                              for k, v in s.items()},
              "command": f"OMP_NUM_THREADS=1 python chapters/results/06_infosam/make_results.py {args.part}"
                         + (" --quick" if args.quick else ""),
              "rows": []}
    path = Path(args.out) / f"{args.part}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(rows):
        result["rows"] = rows
        result["environment"] = {"python": sys.version.split()[0], "torch": torch.__version__,
                                 "processor": platform.processor() or platform.machine(),
                                 "cpu_s": round(time.process_time() - t0, 1)}
        path.write_text(json.dumps(result, indent=1), encoding="utf-8")

    save(PARTS[args.part](s, save))
    print(f"wrote {path} ({result['environment']['cpu_s']} CPU-s)")


if __name__ == "__main__":
    main()
