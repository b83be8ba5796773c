"""The chapters' widgets: each is a thin ipywidgets wrapper over a pure samlib function.

Every entry of :data:`WIDGETS` names the pure ``compute`` function, the ``plot`` function that
draws its result on matplotlib axes, and the sliders. A chapter cell holds one call::

    widgets.show("sam2d")

In a live kernel it shows the sliders and one figure, redrawn through the pure function when a
slider moves. Its display bundle also carries that first figure as a static PNG, which every
renderer without a live kernel (nbconvert HTML, the rendered book, GitHub) shows instead of the
widget: one figure in either case. :func:`render` draws one figure and returns it (to zoom or save it).
The tests sweep every ``compute`` over every slider's whole range, headless. The figures follow
:mod:`samlib.plotting` (``plotting.style("projector")`` for a lecture hall).
"""
from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import plotting, toy

__all__ = ["Slider", "Widget", "WIDGETS", "render", "show", "slider_values", "convergence_curves",
           "results_explorer", "explorer_sliders", "sam_cost"]


@dataclass(frozen=True)
class Slider:
    """A slider: ``low`` to ``high`` in steps of ``step``; or, with ``options``, exactly those values
    (numbers or names; ``labels``, if given, are what the slider shows for them)."""
    low: float
    high: float
    step: float
    default: float
    label: str
    options: tuple = ()
    labels: tuple = ()

    @classmethod
    def choice(cls, options, default, label: str, labels=()) -> "Slider":
        """A slider over a list of values (``options``), e.g. methods or a log-spaced grid."""
        options = tuple(options)
        if not options or default not in options:
            raise ValueError(f"Slider {label!r}: default {default!r} is not one of its options {options!r}.")
        return cls(options[0], options[-1], 1, default, label, options, tuple(labels))

    def values(self) -> list:
        if self.options:
            return list(self.options)
        n = int(round((self.high - self.low) / self.step))
        return [round(self.low + i * self.step, 10) for i in range(n + 1)]

    def check(self, name: str, value):
        """``value`` if this slider can take it; otherwise a ValueError naming the slider and its values."""
        if self.options:
            if value not in self.options:
                raise ValueError(f"Invalid {name}={value!r}: choose one of {list(self.options)}.")
        elif not (isinstance(value, (int, float)) and self.low - 1e-9 <= value <= self.high + 1e-9):
            raise ValueError(f"Invalid {name}={value!r}: choose a number from {self.low:g} to {self.high:g}.")
        return value


@dataclass(frozen=True)
class Widget:
    compute: Callable   # pure: keyword arguments -> result
    plot: Callable      # (result, fig, **kwargs) -> None
    sliders: Mapping    # name -> Slider (a lazy mapping where the sliders come from data, e.g. records)
    title: str
    aspect: float = 0.6  # figure height / width


class _LazySliders(Mapping):
    """Sliders found from data (the results explorers read the committed records) on first use."""

    def __init__(self, make: Callable[[], dict]):
        self._make, self._sliders = make, None

    def _get(self) -> dict:
        if self._sliders is None:
            self._sliders = self._make()
        return self._sliders

    def __getitem__(self, key):
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self):
        return len(self._get())


def slider_values(name: str) -> dict:
    """Every slider of widget ``name`` with its full list of values (what the tests sweep)."""
    return {k: s.values() for k, s in WIDGETS[name].sliders.items()}


# ---- chapter 01 ----------------------------------------------------------------------------

def _landscape_compute(noise, sharp_width, lr=0.05):
    out = toy.noisy_gd_landing(noise=noise, sharp_width=sharp_width, lr=lr, runs=200, steps=2000)
    out["gibbs_sharp"] = toy.two_wells_gibbs_share(out["temperature"], sharp_width) if noise > 0 else None
    return out


def _landscape_plot(res, fig, noise, sharp_width, lr=0.05):
    fig.set_layout_engine("constrained")
    ax = fig.subplots()
    x = torch.linspace(-3, 3, 600, dtype=torch.float64)
    ax.plot(x, toy.two_wells(x, sharp_width), color="k", label="loss $L(x)$")
    ax.hist(res["x"].numpy(), bins=60, range=(-3, 3), density=True, alpha=0.5, color="tab:blue",
            label="where noisy GD ends (2000 steps)")
    ax.axvline(res["barrier"], color="tab:gray", ls=":", label="barrier between the basins")
    curv = toy.two_wells_curvatures(sharp_width)[0]
    gibbs = "" if noise == 0 else f" (Gibbs at $\\tau$: {res['gibbs_sharp']:.0%})"
    ax.set(xlabel="parameter $x$", ylabel="loss / density",
           title=f"$\\sigma$={noise:g}, $\\eta$={lr:g}: temperature $\\tau=\\eta\\sigma^2/2$={res['temperature']:.3f}, "
                 f"$\\eta L''_{{sharp}}$={lr * curv:.2f}\n"
                 f"{res['sharp']:.0%} end in the sharp basin{gibbs}, {res['flat']:.0%} in the flat one")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)


# ---- chapter 02 ----------------------------------------------------------------------------

SAM2D_STEPS = 300


def _sam2d_compute(rho, lr):
    paths = toy.sam_runs(torch.tensor([0.0, rho], dtype=torch.float64), lr, steps=SAM2D_STEPS, runs=2)
    return {"gd": paths[:, 0], "sam": paths[:, 1], "sam_mean": paths[-100:, 1].mean(0),
            "points": toy.two_basins_2d_critical_points()}


def _sam2d_plot(res, fig, rho, lr):
    fig.set_layout_engine("constrained")
    ax = fig.subplots()
    pts = res["points"]
    frame = torch.cat([res["gd"], res["sam"], pts["saddle"]["w"][None], pts["sharp"]["w"][None]])
    lo, hi = frame.amin(0) - 0.2, frame.amax(0) + 0.2
    xs, ys = torch.meshgrid(torch.linspace(float(lo[0]), float(hi[0]), 200, dtype=torch.float64),
                            torch.linspace(float(lo[1]), float(hi[1]), 160, dtype=torch.float64), indexing="xy")
    z = toy.two_basins_2d(torch.stack([xs, ys], -1))
    cs = ax.contourf(xs, ys, z, levels=30, cmap="viridis")
    ax.contour(xs, ys, z, levels=15, colors="k", linewidths=0.5, alpha=0.6)
    ax.contour(xs, ys, z, levels=[pts["saddle"]["loss"]], colors="tab:orange", linewidths=1.2, linestyles="--")
    ax.plot([], [], color="tab:orange", ls="--", label="level set through the saddle")
    fig.colorbar(cs, ax=ax, label="loss $L(w)$")
    for key, color, name in (("gd", "w", "GD"), ("sam", "tab:red", "SAM")):
        path = res[key]
        ax.plot(path[:, 0], path[:, 1], "-o", ms=3, lw=0.8, color=color, mec="k", mew=0.3,
                label=f"{name} (last iterate {tuple(round(float(v), 2) for v in path[-1])})")
    start = res["gd"][0]
    ax.plot(*start.tolist(), marker="*", ms=14, color="w", mec="k", ls="none", label="start")
    ax.plot(*pts["saddle"]["w"].tolist(), marker="X", ms=11, color="tab:orange", mec="k", ls="none",
            label="saddle of $L$")
    ax.plot(*pts["sharp"]["w"].tolist(), marker="v", ms=9, color="w", mec="k", ls="none", label="sharp minimum")
    ax.plot(*res["sam_mean"].tolist(), marker="D", ms=8, color="tab:red", mec="w", ls="none",
            label="SAM's mean over its last 100 steps")
    ax.set(xlim=(float(lo[0]), float(hi[0])), ylim=(float(lo[1]), float(hi[1])), aspect="equal",
           xlabel="$w_1$", ylabel="$w_2$", title=f"GD and SAM, $\\rho$={rho:g}, $\\eta$={lr:g}, {SAM2D_STEPS} steps")
    fig.legend(loc="outside lower center", ncol=2, frameon=False)  # below the axes, never over the paths


# ---- chapter 03 ----------------------------------------------------------------------------

def _presam_compute(c1, c2, angle):
    g = torch.tensor([np.cos(np.radians(angle)), np.sin(np.radians(angle))], dtype=torch.float64)
    c_inv = torch.tensor([c1, c2], dtype=torch.float64)
    rho = 1.0
    cp = toy.cp_perturbation(g, c_inv, rho)
    return {"g": g, "sam": rho * g / g.norm(), "cp": cp, "op": toy.op_perturbation(g, c_inv, rho),
            "op_sq": toy.op_perturbation(g, c_inv * c_inv, rho), "c_inv": c_inv, "cp_radius": float(cp.norm())}


def _presam_plot(res, fig, c1, c2, angle):
    ax = fig.subplots()
    t = np.linspace(0, 2 * np.pi, 300)
    ax.plot(np.cos(t), np.sin(t), "k--", lw=1, label=r"$\|\epsilon\|\leq\rho$ (SAM, OP)")
    ax.plot(c1 * np.cos(t), c2 * np.sin(t), "b-", lw=1, label=r"$\|C\epsilon\|\leq\rho$ (CP)")
    # g is a unit vector and rho = 1, so rho g/||g|| = g: draw g longer and dashed, or SAM's arrow hides it
    g = 1.35 * res["g"].numpy()
    ax.annotate("", xy=g, xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="gray", lw=1.5, ls="--"))
    ax.plot([], [], color="gray", ls="--", label=r"gradient direction $g$ (drawn $1.35\rho$ long)")
    arrows = (("sam", "k", "-", r"SAM: $\rho g/\|g\|$"),
              ("cp", "b", "-", rf"CP, $C^{{-1}}$ = diag({c1:g}, {c2:g})"),
              ("op", "m", "-", rf"OP, $P = C^{{-1}}$ = diag({c1:g}, {c2:g})"),
              ("op_sq", "g", ":", r"OP, $P = C^{-2}$: CP's direction, $\|\epsilon\| = \rho$"))
    for key, color, style, label in arrows:
        v = res[key].numpy()
        ax.annotate("", xy=v, xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=color, lw=2, ls=style))
        ax.plot([], [], color=color, ls=style, lw=2, label=label)
    lim = max(c1, c2, 1.35) * 1.1
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel=r"$\epsilon_1$", ylabel=r"$\epsilon_2$",
           title=rf"gradient at {angle:g}°; $\|\epsilon_{{CP}}\|/\rho$ = {res['cp_radius']:.2f}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


# ---- chapter 05 ----------------------------------------------------------------------------

#: Okabe-Ito colours: distinguishable with the common colour-vision deficiencies (no red-green pair).
_OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "blue": "#0072B2",
              "vermillion": "#D55E00", "purple": "#CC79A7"}


@functools.lru_cache(maxsize=16)
def _noise_lab(noise_rate: float):
    """The widget's network: a width-8 small CNN trained for 2 epochs of SGD on 1,000 bundled images
    whose labels carry ``noise_rate`` symmetric noise (cached per rate, about a second each).

    It is smaller and less trained than chapter 05's (2,000 images, width 16, 3 epochs), so its
    gradient is larger relative to the noise and its alignments are higher.
    """
    from .data import add_label_noise, load_fashion_mnist, to_float
    from .train import TrainConfig, train
    x, y = load_fashion_mnist("train", subset=True)
    x, y = to_float(x[:1000]), y[:1000]
    labels = add_label_noise(y, noise_rate, 10, seed=0)[0] if noise_rate > 0 else y
    cfg = TrainConfig(method="SGD", model="small_cnn", model_kwargs={"width": 8}, epochs=2, batch_size=64,
                      lr=0.05, device="cpu", seed=0)
    return train(cfg, (x, labels), progress=False)["model"], x, labels


def _alignment_compute(log2_batch, noise_rate):
    from .diagnostics import adversary_alignment
    model, x, labels = _noise_lab(round(float(noise_rate), 4))
    return adversary_alignment(model, x, labels, "SAM", rho=0.05, batch_size=int(2 ** log2_batch), n_batches=6,
                               warmup=0, seed=int(log2_batch))


def _alignment_plot(res, fig, log2_batch, noise_rate):
    ax1, ax2 = fig.subplots(1, 2)
    n = len(res["cos"])
    mean, se = float(res["cos"].mean()), float(res["cos"].std() / n ** 0.5)
    ax1.bar(range(n), res["cos"].numpy(), color=_OKABE_ITO["blue"])
    ax1.axhline(mean, color=_OKABE_ITO["black"], ls="--", label=f"mean {mean:.2f} ± {se:.2f} (SE)")
    ax1.set(xlabel="minibatch", ylabel=r"cos($\epsilon_{batch}$, $\epsilon_{full}$)", ylim=(-0.2, 1),
            title=f"alignment: B = {int(2 ** log2_batch)}, label noise {noise_rate:.0%}")
    ax1.legend(loc="upper left")
    ax2.bar(range(n), res["ascent"].numpy(), color=_OKABE_ITO["orange"], label="minibatch adversary")
    ax2.axhline(res["full_ascent"], color=_OKABE_ITO["black"], ls="--", label="full-data adversary")
    ax2.set(xlabel="minibatch", ylabel="full-data loss increase", title=r"ascent at $\rho$ = 0.05")
    ax2.legend(loc="lower right")
    fig.suptitle("widget network: 1,000 images, width 8, 2 epochs (less trained than the chapter's)")
    fig.set_layout_engine("constrained")


# ---- chapter 06 ----------------------------------------------------------------------------

_INFOSAM_STYLE = {"SAM": (_OKABE_ITO["black"], "-"), "InfoSAM": (_OKABE_ITO["blue"], "-"),
                  "InfoSAM, gain before": (_OKABE_ITO["sky"], "--"), "running mean": (_OKABE_ITO["orange"], "-."),
                  "oracle": (_OKABE_ITO["purple"], ":")}


def _infosam_compute(noise, beta, drift=0.0):
    from .diagnostics import synthetic_stream_alignment
    return synthetic_stream_alignment(noise=noise, beta=beta, drift=drift, steps=60)


def _infosam_plot(res, fig, noise, beta, drift=0.0):
    ax = fig.subplots()
    for key, (color, ls) in _INFOSAM_STYLE.items():
        ax.plot(res[key], color=color, ls=ls, lw=2, label=f"{key} (mean {float(res[key][10:].mean()):.2f})")
    ax.set(xlabel="step t", ylabel=r"cos($\epsilon_t$, $g(t)$)", ylim=(-0.05, 1.02),
           title=rf"noise {noise:g}, $\beta$ = {beta:g}, drift {drift:g}°/step (means over steps 10+)")
    ax.legend(loc="lower left")
    fig.set_layout_engine("constrained")


WIDGETS = {
    "landscape": Widget(_landscape_compute, _landscape_plot, {
        "noise": Slider(0.0, 5.0, 0.25, 3.0, "gradient noise sigma"),
        "lr": Slider(0.01, 0.1, 0.01, 0.05, "step size eta"),
        "sharp_width": Slider(0.05, 0.4, 0.05, 0.15, "sharp-well width")}, "Noisy GD on a sharp and a flat well"),
    "sam2d": Widget(_sam2d_compute, _sam2d_plot, {
        "rho": Slider(0.0, 0.6, 0.05, 0.3, "rho"),
        "lr": Slider(0.01, 0.1, 0.01, 0.05, "step size eta")}, "GD and SAM on a 2-D loss", aspect=0.75),
    "presam": Widget(_presam_compute, _presam_plot, {
        "c1": Slider(0.25, 2.0, 0.25, 1.5, "C^-1 entry 1"),
        "c2": Slider(0.25, 2.0, 0.25, 0.5, "C^-1 entry 2"),
        "angle": Slider(0.0, 350.0, 10.0, 30.0, "gradient angle")}, "CP and OP perturbations in 2-D"),
    "alignment": Widget(_alignment_compute, _alignment_plot, {
        "log2_batch": Slider(3.0, 9.0, 1.0, 6.0, "log2 batch size"),
        "noise_rate": Slider(0.0, 0.8, 0.2, 0.0, "label-noise rate")}, "How good is a minibatch adversary?"),
    "infosam": Widget(_infosam_compute, _infosam_plot, {
        "noise": Slider(0.0, 2.0, 0.1, 0.8, "noise level"),
        "beta": Slider(0.0, 0.99, 0.03, 0.9, "beta"),
        "drift": Slider(0.0, 5.0, 0.5, 0.0, "drift (degrees/step)")}, "Noise-aware adversaries on a gradient stream"),
}



# ==== chapters 04, 07, 08 and 09 ===========================================================
# (below the entries above so that chapter owners' edits and these never touch the same lines)

_OI = plotting.OKABE_ITO


def _legend_below(fig, ax, ncol: int = 1):
    """The legend under the axes, inside the figure (constrained layout makes room): it never covers the data."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False)


# ---- chapter 04: the measured rate and the bias floor ----------------------------------------

#: The horizons at which chapter 04's toy is run; window means between them trace E||grad L(w_t)||^2.
CONVERGENCE_HORIZONS = (12, 25, 50, 100, 200, 400)


@functools.lru_cache(maxsize=64)
def _presam_run(lr: float, rho: float, spectrum: tuple | None) -> tuple:
    """Running averages (1/T) sum_{t<T} ||grad L(w_t)||^2 of preSAM (CP) with SGD on chapter 04's problem,
    at every horizon T of :data:`CONVERGENCE_HORIZONS`, and L(w_0) - L^*.

    ``spectrum``: the diagonal of C^{-1} (None: SGD when ``rho`` = 0, SAM otherwise). Every run uses seed 0,
    so all methods see the same noise; a shorter horizon is a prefix of a longer one (same draws).
    """
    problem = toy.NonconvexProblem(dim=10, a=2.0, sigma=1.0)
    precond = None if spectrum is None else torch.tensor(spectrum, dtype=torch.float64)
    outs = [toy.presam_sgd(problem, T, lr, rho, runs=16, seed=0, precond=precond, kind="CP", w0=0.3)
            for T in CONVERGENCE_HORIZONS]
    return tuple(o["mean"] for o in outs), outs[0]["gap0"]


def convergence_curves(kappa: float, rho: float, lr: float) -> dict:
    r"""Chapter 04's theorem, measured: preSAM (CP) with SGD at a constant step ``lr`` and a constant
    radius ``rho`` on ``toy.NonconvexProblem`` (10-D, :math:`\ell = 3`, noise :math:`\sigma^2 = 10`, start 0.3), 16 runs.

    Three methods on the same noise: SGD; CP *inscribed*, :math:`C^{-1}` with spectrum log-spaced in
    :math:`[1/\kappa, 1]` (:math:`\Lambda = 1`); CP *containing*, spectrum in :math:`[1, \kappa]`
    (:math:`\Lambda = \kappa`, the old normalization). Returns, per method, the window means of
    :math:`\|\nabla L(w_t)\|^2` between successive horizons (``t``: the windows' geometric midpoints), the running
    averages (the theorem's left-hand side), the measured floor (the mean over the last window) and the theorem's
    terms: noise :math:`2\ell\eta\sigma^2`, bias :math:`(2+4\ell\eta)\ell^2\Lambda^2\rho^2` and the whole bound at the last horizon.
    About 0.3 s on one core (SGD's runs are cached per step size).
    """
    ell, sigma2, dim = 3.0, 10.0, 10
    if lr > 1 / (4 * ell):
        raise ValueError(f"Invalid lr={lr}: the theorem needs lr <= 1/(4 ell) = {1 / (4 * ell):.4f}.")
    c = np.logspace(0.0, math.log10(kappa), dim) if kappa > 1 else np.ones(dim)
    specs = {"SGD": (0.0, None, 0.0), "inscribed": (rho, tuple(c / kappa), 1.0), "containing": (rho, tuple(c), float(kappa))}
    H = np.array(CONVERGENCE_HORIZONS, dtype=float)
    out = {"t": np.sqrt(H[1:] * H[:-1]), "horizons": H, "curves": {}, "running": {}, "floor": {}, "Lambda": {},
           "bias_term": {}, "bound": {}, "noise_term": 2 * ell * lr * sigma2}
    for name, (r, spec, lam) in specs.items():
        running, gap0 = _presam_run(float(lr), float(r), None if r == 0 else spec)
        running = np.array(running)
        window = (H[1:] * running[1:] - H[:-1] * running[:-1]) / (H[1:] - H[:-1])
        bias = (2 + 4 * ell * lr) * ell ** 2 * lam ** 2 * r ** 2
        out["curves"][name], out["running"][name], out["floor"][name] = window, running, float(window[-1])
        out["Lambda"][name], out["bias_term"][name] = lam, bias
        out["bound"][name] = 4 * gap0 / (lr * H[-1]) + out["noise_term"] + bias
    return out


_CONVERGENCE_STYLE = {"SGD": (_OI["black"], "-", "o", r"SGD ($\rho$ = 0)"),
                      "inscribed": (_OI["blue"], "--", "s", r"CP inscribed ($\Lambda$ = 1)"),
                      "containing": (_OI["vermillion"], "-.", "^", r"CP containing ($\Lambda$ = $\kappa$)")}


def _convergence_plot(res, fig, kappa, rho, lr):
    fig.set_layout_engine("constrained")
    ax = fig.subplots()
    for name, (color, ls, marker, label) in _CONVERGENCE_STYLE.items():
        ax.loglog(res["t"], res["curves"][name], ls=ls, marker=marker, color=color,
                  label=f"{label}: floor {res['floor'][name]:.2f}")
    ax.axhline(res["bound"]["inscribed"], color=_OI["blue"], ls=":",
               label=f"theorem's bound on the average, $\\Lambda$ = 1: {res['bound']['inscribed']:.0f}")
    from matplotlib.ticker import FormatStrFormatter, LogLocator
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
    last = res["horizons"][-2:]
    ax.set(xlabel="step t", ylabel=r"mean $\|\nabla L(w_t)\|^2$ (16 runs)",
           title=rf"$\kappa$ = {kappa:g}, $\rho$ = {rho:g}, $\eta$ = {lr:g}; floor: mean over t = {last[0]:.0f}–{last[1]:.0f}")
    _legend_below(fig, ax)


# ---- chapters 07 and 08: a results explorer over committed records ---------------------------

def _signature(folder: Path) -> tuple:
    return tuple(sorted((str(p), p.stat().st_mtime_ns) for p in folder.glob("**/records/*.json")))


@functools.lru_cache(maxsize=8)
def _load_arms(folder: str, signature: tuple) -> dict:
    """``{arm: [records]}``: ``folder/records`` is one arm (named after the folder); each subfolder with a
    ``records/`` folder is an arm of its own (chapter 07's experiment: ``b128/``, ``b32/``, ...)."""
    from .experiments import stats
    root = Path(folder)
    arms = {}
    if any((root / "records").glob("*.json")):
        arms[root.name] = stats.load_records(root)
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if any((sub / "records").glob("*.json")):
            arms[sub.name] = stats.load_records(sub)
    if not arms:
        raise FileNotFoundError(f"No run records under {root} (expected {root}/records/*.json or {root}/<arm>/records/*.json). "
                                "Run the course grid first: python -m samlib.experiments --help.")
    return arms


def _arms(folder) -> dict:
    folder = Path(folder)
    return _load_arms(str(folder), _signature(folder))


def _hp_key(hparams: dict) -> tuple:
    return tuple(sorted(hparams.items()))


def _hp_text(hparams: dict) -> str:
    names = {"rho": "ρ", "lr": "η", "theta": "θ", "beta": "β"}
    return ", ".join(f"{names.get(k, k)} = {v:g}" if isinstance(v, (int, float)) else f"{k} = {v}"
                     for k, v in sorted(hparams.items())) or "default"


def _settings(records: list, method: str) -> list[dict]:
    """The method's hyperparameter settings in the records, sorted (by rho, then the others)."""
    found = {_hp_key(r["config"]["hparams"]): r["config"]["hparams"] for r in records if r["config"]["method"] == method}
    return [found[k] for k in sorted(found, key=lambda k: (dict(k).get("rho", 0.0), k))]


def explorer_sliders(folder) -> dict:
    """The explorer's sliders, discovered from the records under ``folder``: the arm (if several), the
    label-noise rate (if several), the method, and its setting (0: the one chosen on validation; k: the
    k-th of its settings, by rho)."""
    from .experiments import stats
    arms = _arms(folder)
    rates = sorted({r["noise_rate"] for recs in arms.values() for r in recs})
    methods = sorted({r["config"]["method"] for recs in arms.values() for r in recs}, key=lambda m: (stats.method_order(m), m))
    most = max(len(_settings(recs, m)) for recs in arms.values() for m in methods)
    sliders = {}
    if len(arms) > 1:
        sliders["arm"] = Slider.choice(list(arms), next(iter(arms)), "experiment arm")
    if len(rates) > 1:
        sliders["noise_rate"] = Slider.choice(rates, rates[-1], "label-noise rate", [f"{r:.0%}" for r in rates])
    sliders["method"] = Slider.choice(methods, "InfoSAM" if "InfoSAM" in methods else methods[-1], "method")
    sliders["setting"] = Slider.choice(list(range(most + 1)), 0, "setting (0: validation's choice)",
                                       ["val."] + [f"#{k}" for k in range(1, most + 1)])
    return sliders


def _curve(records: list, key: str) -> dict:
    from .experiments import stats
    epochs, mean = stats.mean_curve(records, key)
    per_seed = [[{h["epoch"]: h[key] for h in r["history"] if key in h}[e] for e in epochs] for r in records]
    sd = np.std(np.array(per_seed), axis=0, ddof=1) if len(records) > 1 else np.zeros(len(epochs))
    return {"epochs": epochs, "mean": np.array(mean), "sd": sd, "seeds": sorted(r["config"]["seed"] for r in records)}


def results_explorer(folder, arm=None, noise_rate=None, method="InfoSAM", setting=0, baselines=("SAM", "SGD")) -> dict:
    """One view of a course grid's records (chapters 07 and 08), torch-free.

    For ``method`` at its validation-chosen setting (``setting=0``) or at its ``setting``-th setting
    (sorted by rho), in ``arm`` at label-noise rate ``noise_rate`` (default: the first arm, the largest
    rate): its test curve (mean and sd over seeds of the task's test metric, ``stats.TEST_METRIC``), the
    baselines' curves at their validation-chosen settings, and the seed-paired differences of the final
    test metric against each baseline with a 95% Student-t interval (``stats.paired_differences``).
    Every choice of setting on validation is ``stats.summarize_records``', never a test score.
    """
    from .experiments import stats
    arms = _arms(folder)
    arm = next(iter(arms)) if arm is None else arm
    if arm not in arms:
        raise ValueError(f"Invalid arm={arm!r}: the records under {folder} have arms {list(arms)}.")
    records = arms[arm]
    rates = sorted({r["noise_rate"] for r in records})
    rate = rates[-1] if noise_rate is None else min(rates, key=lambda x: abs(x - noise_rate))
    records = [r for r in records if r["noise_rate"] == rate]
    task = stats.task_of(records[0])
    metric = stats.TEST_METRIC[task]
    out = {"arm": arm, "noise_rate": rate, "requested_rate": noise_rate, "method": method, "task": task, "metric": metric,
           "methods": sorted({r["config"]["method"] for r in records}, key=stats.method_order)}
    if method not in out["methods"]:
        out["missing"] = f"{method} was not run in arm {arm!r} at noise {rate:g} (there: {', '.join(out['methods'])})"
        return out
    summary = stats.summarize_records(records)
    chosen = {row["method"]: row for row in summary["selected"]}
    settings = _settings(records, method)
    hp = chosen[method]["hparams"] if setting == 0 else settings[min(int(setting), len(settings)) - 1]
    out.update(selection_metric=summary["selection_metric"], hparams=hp, settings=settings,
               is_selected=_hp_key(hp) == _hp_key(chosen[method]["hparams"]))
    # the curves: the method at this setting, the baselines at their validation choices
    lines = {method: hp, **{b: chosen[b]["hparams"] for b in baselines if b in chosen and b != method}}
    keys = [metric] + [k for k in ("test_acc", "test_miou", "test_pixel_acc") if k != metric]
    out["curves"], out["curve_metric"] = {}, None
    for m, h in lines.items():
        recs = [r for r in records if r["config"]["method"] == m and _hp_key(r["config"]["hparams"]) == _hp_key(h)]
        key = next((k for k in keys if all(any(k in e for e in r["history"]) for r in recs)), None)
        if key is not None and out["curve_metric"] in (None, key):
            out["curve_metric"] = key
            out["curves"][m] = {"hparams": h, **_curve(recs, key)}
    # seed-paired final differences; the method's row replaced by the setting shown
    selected = [row if row["method"] != method else {**row, "hparams": hp} for row in summary["selected"]]
    pairs = [(method, b) for b in baselines if b in chosen and b != method]
    out["paired"] = stats.paired_differences({**summary, "selected": selected}, records, pairs=pairs, metric=metric)
    return out


def _pct(metric: str) -> float:
    return 100.0 if metric.endswith(("acc", "miou", "iou")) else 1.0


def _explorer_plot(res, fig, **values):
    fig.set_layout_engine("constrained")
    if "missing" in res:
        ax = fig.subplots()
        ax.set_axis_off()
        ax.text(0.5, 0.5, res["missing"], ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.set(xlabel="(no records)", ylabel="(no records)")
        return
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.4, 1])
    colors = {res["method"]: _OI["blue"], "SAM": _OI["orange"], "SGD": _OI["black"]}
    styles = {res["method"]: "-", "SAM": "--", "SGD": ":"}
    unit = _pct(res["curve_metric"] or res["metric"])
    for m, c in res["curves"].items():
        color = colors.get(m, _OI["green"])
        how = "" if m == res["method"] else ", validation's choice"
        ax1.plot(c["epochs"], unit * c["mean"], ls=styles.get(m, "-."), marker="o", color=color,
                 label=f"{m} ({_hp_text(c['hparams'])}{how})")
        ax1.fill_between(c["epochs"], unit * (c["mean"] - c["sd"]), unit * (c["mean"] + c["sd"]), color=color, alpha=0.15)
    words = {"acc": "accuracy", "miou": "mIoU", "iou": "IoU"}
    ylabel = " ".join(words.get(w, w) for w in (res["curve_metric"] or res["metric"]).split("_")) + (" (%)" if unit == 100 else "")
    ax1.set(xlabel="epoch", ylabel=ylabel, title=f"{res['arm']}, label noise {res['noise_rate']:.0%}")
    n = len(res["paired"])
    for i, row in enumerate(res["paired"]):
        lo, hi = (unit * v for v in row["ci95"])
        ax2.errorbar(unit * row["mean"], i, xerr=[[unit * row["mean"] - lo], [hi - unit * row["mean"]]], fmt="o",
                     color=colors.get(row["b"], _OI["green"]), capsize=6, label=f"95% interval, {len(row['seeds'])} seeds")
        ax2.plot([unit * d for d in row["diffs"]], [i - 0.2] * len(row["diffs"]), "x", color=_OI["gray"])
    ax2.axvline(0.0, color=_OI["gray"], lw=1)
    ax2.set_yticks(range(n), [f"{r['a']}\n− {r['b']}" for r in res["paired"]])
    ax2.set_ylim(-0.7, n - 0.3)
    ax2.set(xlabel="final test difference" + (" (points)" if unit == 100 else ""), ylabel="comparison",
            title="paired by seed")
    k = 1 + [_hp_key(h) for h in res["settings"]].index(_hp_key(res["hparams"]))
    n_set = len(res["settings"])
    if values.get("setting", 0) == 0:
        how = f"validation's choice: setting #{k} of {n_set}"
    else:
        how = f"setting #{k} of {n_set}" + (", also validation's choice" if res["is_selected"] else ", not validation's choice")
    fig.suptitle(f"{res['method']} at {_hp_text(res['hparams'])} ({how})")
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=1, frameon=False)


# ---- chapter 09: the cost model of SAM -------------------------------------------------------

#: samlib's CIFAR ResNet-18 (width 64) on a 32x32x3 image, counted with torch (``tests/test_plotting.py``
#: recounts them): parameters; forward and forward+backward FLOPs per example (``FlopCounterMode``); bytes
#: of activations saved for the backward pass per example in fp32 (``saved_tensors_hooks``, parameters
#: excluded); leaf modules (about three kernels each per pass: forward, input and weight gradients).
RESNET18_CIFAR = {"params": 11_173_962, "forward_flops": 1.11084544e9, "train_flops": 3.328997376e9,
                  "activation_bytes": 7.392858e6, "layers": 47}

#: An *illustrative* GPU, not a measurement [ours, model]: the achieved (not peak) throughput of a
#: recent data-centre GPU, its memory bandwidth, a kernel launch, and a ring all-reduce link.
#: Pass your own (``sam_cost(..., machine=...)``); chapter 09 measures real ratios with ``python -m samlib.bench``.
ILLUSTRATIVE_GPU = {"flops": {"fp32": 15e12, "bf16": 60e12, "fp16": 60e12}, "memory_bytes_per_s": 1.5e12,
                    "launch_s": 5e-6, "link_bytes_per_s": 100e9, "link_latency_s": 20e-6}

#: Parameter-sized fp32 reads + writes per step [ours, model]: SGD with momentum (read w, g, m; write w, m);
#: SAM per perturbation chunk (copy g, its norm, eps = rho g/||g||, w += eps, w -= eps, accumulate the
#: perturbed gradient); InfoSAM adds its running mean and variance and the gain per chunk; fp16's GradScaler
#: unscales and checks the gradients after every backward; autocast casts the weights once per forward.
_PASSES_OVER_PARAMS = {"sgd": 5, "sam_chunk": 13, "infosam_chunk": 9, "unscale": 3, "cast": 1.5}


def sam_cost(batch: int, workers: int = 1, chunks: int = 1, precision: str = "fp32", perturbation: str = "local",
             model: dict = RESNET18_CIFAR, machine: dict = ILLUSTRATIVE_GPU) -> dict:
    """Chapter 09's cost model of one training step, per worker, for SGD, SAM and InfoSAM [ours, model].

    ``batch`` is the global batch, split over ``workers`` data-parallel processes (DDP); each worker's
    share is split into ``chunks`` perturbation chunks (m-sharpness, m = batch / workers / chunks; with
    one chunk, m is the per-worker batch, which is what DDP's local mode does anyway). ``precision``:
    fp32, or autocast in bf16 / fp16 (fp16 with a GradScaler). ``perturbation``: "local" (the first
    backward in ``no_sync``) or "synced" (its gradient all-reduced too).

    Time (seconds) = FLOPs / throughput + kernel launches + parameter-sized memory traffic / bandwidth
    + ring all-reduces of the fp32 gradient (2 (k-1)/k of its bytes over the link, plus latency).
    SAM does two forward-backward passes, each split in ``chunks``; it all-reduces once in local mode,
    twice synced. Memory (bytes): weights, gradients, momentum, SAM's three flat buffers (g, eps and
    w + eps; chapter 09), InfoSAM's two running statistics, and the activations of one chunk (SAM frees
    them between passes; autocast stores about half the bytes). The numbers depend on ``machine``;
    the structure (what grows with what) is the lesson. Pure arithmetic: microseconds per call.
    """
    if precision not in machine["flops"]:
        raise ValueError(f"Invalid precision={precision!r}: choose one of {list(machine['flops'])}.")
    if perturbation not in ("local", "synced"):
        raise ValueError(f"Invalid perturbation={perturbation!r}: choose 'local' or 'synced'.")
    if batch < workers:
        raise ValueError(f"Invalid batch={batch} for workers={workers}: every worker needs at least one example.")
    P = model["params"]
    per_worker = batch / workers
    chunks = int(min(chunks, per_worker))
    m = per_worker / chunks
    flops_per_s, bw = machine["flops"][precision], machine["memory_bytes_per_s"]
    kernels = 3 * model["layers"]
    amp = precision != "fp32"
    act = model["activation_bytes"] * (0.5 if amp else 1.0)

    def traffic(passes_over_params):
        return passes_over_params * 4 * P / bw

    def allreduce():
        if workers == 1:
            return 0.0
        return 2 * (workers - 1) / workers * 4 * P / machine["link_bytes_per_s"] + 2 * (workers - 1) * machine["link_latency_s"]

    out = {"batch": batch, "workers": workers, "per_worker": per_worker, "chunks": chunks, "m": m,
           "precision": precision, "perturbation": perturbation, "time": {}, "memory": {}}
    for method in ("SGD", "SAM", "InfoSAM"):
        sam = method != "SGD"
        n_fb = 2 * chunks if sam else 1                       # forward-backward calls per step
        t = {"compute": (2 if sam else 1) * model["train_flops"] * per_worker / flops_per_s,
             "launches": n_fb * kernels * machine["launch_s"]}
        opt = _PASSES_OVER_PARAMS["sgd"]
        if sam:
            opt += chunks * (_PASSES_OVER_PARAMS["sam_chunk"] + (_PASSES_OVER_PARAMS["infosam_chunk"] if method == "InfoSAM" else 0))
        if amp:
            opt += n_fb * _PASSES_OVER_PARAMS["cast"] + (n_fb * _PASSES_OVER_PARAMS["unscale"] if precision == "fp16" else 0)
        t["optimizer"] = traffic(opt)
        t["communication"] = allreduce() * ((2 if perturbation == "synced" else 1) if sam else 1)
        mem = {"weights + gradients": 2 * 4 * P, "momentum": 4 * P,
               "SAM buffers": (3 * 4 * P if sam else 0) + (2 * 4 * P if method == "InfoSAM" else 0),
               "activations": act * (m if sam else per_worker)}
        out["time"][method], out["memory"][method] = t, mem
    total = {k: sum(v.values()) for k, v in out["time"].items()}
    out["total_time"], out["ratio"] = total, {k: v / total["SGD"] for k, v in total.items()}
    out["total_memory"] = {k: sum(v.values()) for k, v in out["memory"].items()}
    return out


_COST_COLORS = {"compute": _OI["blue"], "launches": _OI["sky"], "optimizer": _OI["orange"], "communication": _OI["vermillion"],
                "weights + gradients": _OI["gray"], "momentum": _OI["yellow"], "SAM buffers": _OI["purple"],
                "activations": _OI["green"]}


def _cost_compute(batch, workers, chunks, precision, perturbation):
    return sam_cost(int(batch), int(workers), int(chunks), precision, perturbation)


def _cost_plot(res, fig, **values):
    fig.set_layout_engine("constrained")
    ax1, ax2 = fig.subplots(1, 2)
    methods = list(res["time"])
    for ax, part, scale, unit in ((ax1, "time", 1e3, "ms"), (ax2, "memory", 1e-6, "MB")):
        left = np.zeros(len(methods))
        for comp in res[part]["SGD"]:
            widths = np.array([scale * res[part][m][comp] for m in methods])
            ax.barh(methods, widths, left=left, color=_COST_COLORS[comp], label=comp, edgecolor="white")
            left += widths
        ax.invert_yaxis()
        ax.set(xlabel=f"per step, per worker ({unit})", xlim=(0, 1.3 * left.max()))
    for i, m in enumerate(methods):
        ax1.text(1e3 * res["total_time"][m], i, f" ×{res['ratio'][m]:.2f}", va="center")
    ax1.set(title="time (× SGD)", ylabel="method")
    ax2.set(title="memory", ylabel="method")
    fig.suptitle(f"batch {res['batch']} on {res['workers']} worker(s), m = {res['m']:g}, {res['precision']}, "
                 f"{res['perturbation']} ε (illustrative GPU)")
    handles = [h for ax in (ax1, ax2) for h in ax.get_legend_handles_labels()[0]]
    labels = [lab for ax in (ax1, ax2) for lab in ax.get_legend_handles_labels()[1]]
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)  # below both panels


def _results_folder(name: str) -> Path:
    from .experiments.catalog import COURSE_RESULTS
    return COURSE_RESULTS / name


def _explorer(folder_name: str, title: str) -> Widget:
    def compute(**values):
        return results_explorer(_results_folder(folder_name), **values)
    return Widget(compute, _explorer_plot, _LazySliders(lambda: explorer_sliders(_results_folder(folder_name))), title,
                  aspect=0.62)


WIDGETS.update({
    "convergence": Widget(convergence_curves, _convergence_plot, {
        "kappa": Slider.choice((1.0, 2.0, 4.0, 8.0, 16.0), 4.0, "kappa (condition number)", ("1", "2", "4", "8", "16")),
        "rho": Slider(0.0, 2.0, 0.5, 1.0, "rho (constant)"),
        "lr": Slider(0.02, 0.08, 0.02, 0.04, "step size eta")}, "The rate and the bias floor of preSAM", aspect=0.62),
    "results07": _explorer("07_classification", "Chapter 07's records: test curves and paired differences"),
    "results08": _explorer("08_segmentation", "Chapter 08's records: test curves and paired differences"),
    "cost": Widget(_cost_compute, _cost_plot, {
        "batch": Slider.choice((32, 64, 128, 256, 512, 1024), 128, "global batch"),
        "workers": Slider.choice((1, 2, 4, 8), 1, "workers (DDP)"),
        "chunks": Slider.choice((1, 2, 4, 8, 16), 1, "chunks (m-sharpness)"),
        "precision": Slider.choice(("fp32", "bf16", "fp16"), "fp32", "precision"),
        "perturbation": Slider.choice(("local", "synced"), "local", "perturbation")},
        "The cost of a SAM step: time and memory per worker", aspect=0.62),
})


# ==== drawing and showing ====================================================================

def _values(w: Widget, values: dict) -> dict:
    unknown = set(values) - set(w.sliders)
    if unknown:
        raise ValueError(f"Unknown slider(s) {sorted(unknown)}: this widget has {list(w.sliders)}.")
    return {k: s.check(k, values[k]) if k in values else s.default for k, s in w.sliders.items()}


def _draw(name: str, kwargs: dict, fig=None):
    import matplotlib.pyplot as plt
    w = WIDGETS[name]
    fig = fig or plt.figure(figsize=plotting.figsize(w.aspect))
    w.plot(w.compute(**kwargs), fig, **kwargs)
    fig.draw_without_rendering()  # lay out and create the ticks now, in the current style
    return fig


def render(name: str, fig=None, **values):
    """Draw widget ``name`` once (defaults for missing values) and return the figure, e.g. to zoom or save it.

    In a chapter, prefer :func:`show`: it shows the live widget, and the same figure in a static rendering.
    """
    w = WIDGETS[name]
    return _draw(name, _values(w, values), fig)


def _png(name: str, kwargs: dict, style: str | None) -> bytes:
    import matplotlib.pyplot as plt
    with (plotting.projector(style) if style else _nullcontext()):
        fig = _draw(name, kwargs)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")  # what JupyterLab's inline backend does
        plt.close(fig)
    return buf.getvalue()


def _nullcontext():
    import contextlib
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=1)
def _box_class():
    import ipywidgets as ipw

    class WidgetBox(ipw.VBox):
        """A course widget (title, sliders, figure). Its display bundle holds the live widget *and* the
        figure at the values it was shown with as ``image/png``: JupyterLab with a live kernel renders
        the widget; renderers without a widget manager (nbconvert, the rendered book, GitHub) show the PNG."""
        static_png: bytes | None = None

        def _repr_mimebundle_(self, **kwargs):
            data = super()._repr_mimebundle_(**kwargs)
            if data is not None and self.static_png is not None:
                data = {**data, "image/png": base64.b64encode(self.static_png).decode("ascii")}
            return data

    return WidgetBox


def show(name: str, **values):
    """The live widget ``name``: sliders (starting at ``values`` or the defaults) that recompute and
    redraw its figure through its pure function. One call per chapter cell; no ``render`` before it.

    Returns the widget; as a cell's last expression it displays once: live in JupyterLab, and as the
    static PNG of its first figure wherever no kernel runs it.
    """
    import ipywidgets as ipw
    w = WIDGETS[name]
    start = _values(w, values)
    style = plotting.current()  # redraws keep the style the widget was shown in
    controls = {}
    for k, s in w.sliders.items():
        common = dict(description=s.label, continuous_update=False, style={"description_width": "initial"},
                      layout=ipw.Layout(width="auto", min_width="420px"))
        if s.options:
            labels = s.labels or tuple(str(o) for o in s.options)
            controls[k] = ipw.SelectionSlider(options=list(zip(labels, s.options)), value=start[k], **common)
        else:
            controls[k] = ipw.FloatSlider(value=start[k], min=s.low, max=s.high, step=s.step, **common)
    title = f"<b>{w.title}</b>"
    header, figure = ipw.HTML(title), ipw.Image(format="png")
    # An Image widget, not an Output widget that displays the PNG: nbclient (the book build, nbconvert)
    # mimics a front end's Output widget by sending on the kernel's shell socket while it awaits the
    # cell's reply there, and may then miss the reply until the cell timeout (jupyter/nbclient#312).
    box = _box_class()([header, *controls.values(), figure])

    def redraw(change=None):
        try:
            png = _png(name, {k: c.value for k, c in controls.items()}, style)
        except Exception:
            # a callback's traceback goes to JupyterLab's log console, where no reader looks: show it here too
            header.value = f"{title}<pre style='color:#b00020'>{html.escape(traceback.format_exc())}</pre>"
            raise
        header.value = title
        if box.static_png is None:
            box.static_png = png
        figure.value = png

    for c in controls.values():
        c.observe(redraw, names="value")
    redraw()
    return box
