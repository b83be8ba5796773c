"""Benchmarks for samlib.optim, measured side by side in one run: ``python -m samlib.bench``.

Two tables:

1. Optimizer overhead: time of ``first_step() + second_step()`` (base step included) for every
   variant on ResNet-18-shaped parameters, divided by the same for a plain per-parameter-loop SAM
   written below as the reference (the layout of the most common public implementation). The
   "SAM part" subtracts the base SGD step, timed alone on the same parameters.
2. Persistent memory: what each optimizer holds between steps, in multiples of the parameters.
3. End to end: time per training step of each variant divided by one SGD step, on the small CNN
   with batch 128. Two forward-backward passes put the floor at about 2.0.

Timings on a shared machine are noisy: the entries are timed round-robin (so drift hits all alike)
and the medians reported; run it on a quiet machine and say how many threads it used.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from .models import ResNet18, SmallCNN, count_parameters
from .optim import OPTIMIZERS, frozen_bn_stats

BASE = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)
REFERENCE = "loop SAM (reference)"


class LoopSAM(torch.optim.Optimizer):
    """Reference: SAM with a Python loop over parameters, one kernel (or more) per tensor."""

    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        norms = [p.grad.norm(p=2) for g in self.param_groups for p in g["params"] if p.grad is not None]
        grad_norm = torch.stack(norms).norm(p=2)
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                p.add_(p.grad * scale)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad=False):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.data = self.state[p]["old_p"]
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def _interleaved_medians(fns: dict, device, repeats: int, warmup: int = 3, clock: str = "wall") -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin so drift hits all alike.

    ``clock="wall"`` is elapsed time (CUDA synchronized); ``"process"`` is this process's CPU time,
    which other processes on a shared CPU disturb far less (CPU only: it misses GPU work)."""
    if clock == "process" and device.type != "cpu":
        raise ValueError("clock='process' measures CPU time; on a GPU use clock='wall'.")
    now = CLOCKS[clock]
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = now()
            fn()
            _sync(device)
            times[name].append(now() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _entries(compiled=()) -> list[tuple[str, type, dict]]:
    """(row name, class, extra constructor arguments): every variant, plus ``compile=True`` rows."""
    rows = [(name, cls, {}) for name, cls in OPTIMIZERS.items()]
    return rows + [(f"{name} compile=True", OPTIMIZERS[name], {"compile": True}) for name in compiled]


def optimizer_overhead(width: int, device, repeats: int, clock: str = "wall",
                       compiled=()) -> dict[str, tuple[float, float]]:
    """Per optimizer on ResNet-18(width) parameters: (seconds per first_step + second_step,
    seconds of that spent outside the base SGD step). ``compiled`` adds ``compile=True`` rows."""
    shapes = [p.shape for p in ResNet18(width=width).parameters()]
    gen = torch.Generator().manual_seed(0)
    fns, bases = {}, {}
    for name, cls, extra in [(REFERENCE, LoopSAM, {})] + _entries(compiled):
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(device)
        opt = cls(params, torch.optim.SGD, **BASE, **extra)

        def step(opt=opt):
            opt.first_step()
            opt.second_step()
        fns[name], bases[name] = step, opt.base_optimizer.step
    total = _interleaved_medians(fns, device, repeats, clock=clock)
    base = _interleaved_medians(bases, device, repeats, clock=clock)
    return {name: (total[name], total[name] - base[name]) for name in fns}


def end_to_end(device, repeats: int, batch: int = 128, clock: str = "wall", compiled=()) -> dict[str, float]:
    """Seconds per training step on the small CNN, for SGD and every variant."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    fns = {}
    for name, cls, extra in [("SGD", None, {})] + _entries(compiled):
        torch.manual_seed(0)
        model = SmallCNN().to(device).train()
        if name == "SGD":
            opt = torch.optim.SGD(model.parameters(), **BASE)

            def step(model=model, opt=opt):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
        else:
            opt = cls(model.parameters(), torch.optim.SGD, **BASE, **extra)

            def step(model=model, opt=opt):
                F.cross_entropy(model(x), y).backward()
                opt.first_step(zero_grad=True)
                with frozen_bn_stats(model):
                    F.cross_entropy(model(x), y).backward()
                opt.second_step(zero_grad=True)
        fns[name] = step
    return _interleaved_medians(fns, device, repeats, clock=clock)


def optimizer_memory(opt) -> dict[str, int]:
    """Bytes held between steps by a samlib optimizer (its working buffers and running statistics, from
    ``opt.memory_stats()``) or by the loop reference (its ``old_p`` copies), the base optimizer's state,
    and the parameters themselves."""
    def nbytes(tensors):
        seen = {}
        for t in tensors:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return sum(seen.values())

    params = [p for g in opt.param_groups for p in g["params"]]
    base = [v for s in opt.base_optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    if isinstance(opt, LoopSAM):
        own = {"working_buffers": nbytes([s["old_p"] for s in opt.state.values() if "old_p" in s]), "running_stats": 0}
    else:
        own = opt.memory_stats()
    return {"params": nbytes(params), **own, "base_state": nbytes(base)}


def memory_table(width: int, device) -> dict[str, dict[str, int]]:
    """``optimizer_memory`` after one step of every optimizer on ResNet-18(width)-shaped parameters."""
    shapes = [p.shape for p in ResNet18(width=width).parameters()]
    out = {}
    for name, cls in [(REFERENCE, LoopSAM)] + list(OPTIMIZERS.items()):
        params = [torch.nn.Parameter(torch.randn(s, device=device)) for s in shapes]
        opt = cls(params, torch.optim.SGD, **BASE)
        for _ in range(2):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.first_step()
            opt.second_step()
        out[name] = optimizer_memory(opt)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m samlib.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=30, help="timed repetitions per entry (median reported)")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 16], help="ResNet-18 width multipliers")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--compile", nargs="*", default=[], metavar="NAME",
                        help="also time these variants with compile=True (torch.compile; minutes of compilation)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; process: this process's CPU time (steadier on a shared CPU)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"samlib.bench on {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"median of {args.repeats}, {args.clock} clock")

    tables = {w: optimizer_overhead(w, device, args.repeats, args.clock, args.compile) for w in args.widths}
    for w, table in tables.items():
        ref_total, ref_own = table[REFERENCE]
        print(f"\nOptimizer overhead on ResNet-18 width {w} ({count_parameters(ResNet18(width=w)) / 1e6:.2f}M params): "
              "first_step + second_step, and the part outside the shared SGD base step; ratios to the loop reference")
        print(f"{'optimizer':28s} | {'total ms':>9s} | {'ratio':>6s} | {'SAM part ms':>11s} | {'ratio':>6s}")
        for name, (total, own) in table.items():
            print(f"{name:28s} | {1e3 * total:9.2f} | {total / ref_total:5.2f}x | {1e3 * own:11.2f} | {own / ref_own:5.2f}x")

    memory = {w: memory_table(w, device) for w in args.widths}
    for w, table in memory.items():
        print(f"\nPersistent memory after a step, in multiples of the parameters' bytes (ResNet-18 width {w}; "
              "transient buffers of a step, e.g. SAM's w + eps during the perturbed pass, are not counted)")
        print(f"{'optimizer':22s} | {'buffers':>7s} | {'statistics':>10s} | {'total':>5s} | {'base state':>10s}")
        for name, mem in table.items():
            own = mem["working_buffers"] + mem["running_stats"]
            print(f"{name:22s} | {mem['working_buffers'] / mem['params']:6.2f}x | "
                  f"{mem['running_stats'] / mem['params']:9.2f}x | {own / mem['params']:4.2f}x | "
                  f"{mem['base_state'] / mem['params']:9.2f}x")

    e2e = end_to_end(device, args.repeats, args.batch, args.clock, args.compile)
    print(f"\nEnd to end on SmallCNN ({count_parameters(SmallCNN()) / 1e3:.0f}k params), batch {args.batch}: "
          "ms per training step; ratio to SGD (floor 2.0) and to SAM")
    for opt_name, t in e2e.items():
        print(f"{opt_name:28s} | {1e3 * t:8.2f} ms | {t / e2e['SGD']:5.2f}x SGD | {t / e2e['SAM']:5.2f}x SAM")
    return tables, e2e, memory


if __name__ == "__main__":
    main()
