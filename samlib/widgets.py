"""The chapters' widgets: each is a thin ipywidgets wrapper over a pure samlib function.

Every entry of :data:`WIDGETS` names the pure ``compute`` function, the ``plot`` function that
draws its result on matplotlib axes, and the sliders' ranges. :func:`show` builds the live widget;
:func:`render` draws one figure with given (default) values, so a static notebook still shows it.
The tests sweep every ``compute`` over every slider's whole range, headless.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import toy

__all__ = ["Slider", "Widget", "WIDGETS", "render", "show", "slider_values"]


@dataclass(frozen=True)
class Slider:
    low: float
    high: float
    step: float
    default: float
    label: str

    def values(self) -> list[float]:
        n = int(round((self.high - self.low) / self.step))
        return [round(self.low + i * self.step, 10) for i in range(n + 1)]


@dataclass(frozen=True)
class Widget:
    compute: Callable   # pure: keyword arguments -> result
    plot: Callable      # (result, fig, **kwargs) -> None
    sliders: dict
    title: str


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
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)


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

@functools.lru_cache(maxsize=1)
def _noise_lab():
    """A small CNN trained one epoch on 1,000 bundled Fashion-MNIST images (cached, a few seconds)."""
    from .data import load_fashion_mnist
    from .train import TrainConfig, train
    x, y = load_fashion_mnist("train", subset=True)
    x, y = x[:1000], y[:1000]
    cfg = TrainConfig(method="SGD", model="small_cnn", model_kwargs={"width": 8}, epochs=2, batch_size=64,
                      lr=0.05, device="cpu")
    return train(cfg, (x, y), progress=False)["model"], x, y


def _alignment_compute(log2_batch, noise_rate):
    from .data import add_label_noise, to_float
    from .diagnostics import adversary_alignment
    model, x, y = _noise_lab()
    noisy, _ = add_label_noise(y, noise_rate, 10, seed=0)
    out = adversary_alignment(model, to_float(x), noisy, "SAM", rho=0.05, batch_size=int(2 ** log2_batch),
                              n_batches=4, warmup=0, seed=int(log2_batch))
    return out


def _alignment_plot(res, fig, log2_batch, noise_rate):
    ax1, ax2 = fig.subplots(1, 2)
    ax1.bar(range(len(res["cos"])), res["cos"].numpy(), color="tab:blue")
    ax1.set(xlabel="minibatch", ylabel=r"cos($\epsilon_{batch}$, $\epsilon_{full}$)", ylim=(-0.2, 1),
            title=f"batch {int(2 ** log2_batch)}, label noise {noise_rate:.0%}")
    ax2.bar(range(len(res["ascent"])), res["ascent"].numpy(), color="tab:orange", label="minibatch adversary")
    ax2.axhline(res["full_ascent"], color="k", ls="--", label="full-data adversary")
    ax2.set(xlabel="minibatch", ylabel="full-data loss increase")
    ax2.legend(fontsize=8)


# ---- chapter 06 ----------------------------------------------------------------------------

def _infosam_compute(noise, beta):
    return toy.synthetic_alignment(noise=noise, beta=beta, steps=40)


def _infosam_plot(res, fig, noise, beta):
    ax = fig.subplots()
    for key, color in (("SAM", "k"), ("InfoSAM", "r"), ("oracle", "g")):
        ax.plot(res[key], color=color, label=f"{key} (mean {float(res[key][10:].mean()):.2f})")
    ax.set(xlabel="step t", ylabel=r"cos($\epsilon_t$, $\epsilon_{full}$)", ylim=(0, 1.02),
           title=f"noise {noise:g}, beta {beta:g}")
    ax.legend(loc="lower right")


WIDGETS = {
    "landscape": Widget(_landscape_compute, _landscape_plot, {
        "noise": Slider(0.0, 5.0, 0.25, 3.0, "gradient noise sigma"),
        "lr": Slider(0.01, 0.1, 0.01, 0.05, "step size eta"),
        "sharp_width": Slider(0.05, 0.4, 0.05, 0.15, "sharp-well width")}, "Noisy GD on a sharp and a flat well"),
    "sam2d": Widget(_sam2d_compute, _sam2d_plot, {
        "rho": Slider(0.0, 0.6, 0.05, 0.3, "rho"),
        "lr": Slider(0.01, 0.1, 0.01, 0.05, "step size eta")}, "GD and SAM on a 2-D loss"),
    "presam": Widget(_presam_compute, _presam_plot, {
        "c1": Slider(0.25, 2.0, 0.25, 1.5, "C^-1 entry 1"),
        "c2": Slider(0.25, 2.0, 0.25, 0.5, "C^-1 entry 2"),
        "angle": Slider(0.0, 350.0, 10.0, 30.0, "gradient angle")}, "CP and OP perturbations in 2-D"),
    "alignment": Widget(_alignment_compute, _alignment_plot, {
        "log2_batch": Slider(3.0, 9.0, 1.0, 6.0, "log2 batch size"),
        "noise_rate": Slider(0.0, 0.8, 0.1, 0.0, "label-noise rate")}, "How good is a minibatch adversary?"),
    "infosam": Widget(_infosam_compute, _infosam_plot, {
        "noise": Slider(0.0, 2.0, 0.1, 0.8, "noise level"),
        "beta": Slider(0.0, 0.99, 0.03, 0.9, "beta")}, "InfoSAM's adversary under gradient noise"),
}


def render(name: str, fig=None, **values):
    """Draw widget ``name`` once (defaults for missing values) and return the figure."""
    import matplotlib.pyplot as plt
    w = WIDGETS[name]
    kwargs = {k: values.get(k, s.default) for k, s in w.sliders.items()}
    fig = fig or plt.figure(figsize=(7, 4.2))
    w.plot(w.compute(**kwargs), fig, **kwargs)
    return fig


def show(name: str):
    """The live widget: sliders that recompute and redraw ``name`` through its pure function."""
    import ipywidgets as ipw
    import matplotlib.pyplot as plt
    w = WIDGETS[name]
    controls = {k: ipw.FloatSlider(value=s.default, min=s.low, max=s.high, step=s.step, description=s.label,
                                   continuous_update=False, style={"description_width": "initial"})
                for k, s in w.sliders.items()}

    def update(**kwargs):
        fig = render(name, **kwargs)
        plt.show()
        plt.close(fig)

    out = ipw.interactive_output(update, controls)
    return ipw.VBox([ipw.HTML(f"<b>{w.title}</b>"), *controls.values(), out])
