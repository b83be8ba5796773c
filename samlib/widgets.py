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

def _landscape_compute(noise, sharp_width):
    return toy.noisy_gd_landing(noise=noise, sharp_width=sharp_width, runs=200, steps=300)


def _landscape_plot(res, fig, noise, sharp_width):
    ax = fig.subplots()
    x = torch.linspace(-3, 3, 600, dtype=torch.float64)
    ax.plot(x, toy.two_wells(x, sharp_width), color="k", label="loss $L(x)$")
    ax.hist(res["x"].numpy(), bins=60, range=(-3, 3), density=True, alpha=0.5, label="where noisy GD ends")
    ax.set(xlabel="parameter $x$", ylabel="loss / density",
           title=f"noise {noise:g}: {res['sharp']:.0%} end in the sharp well, {res['flat']:.0%} in the flat one")
    ax.legend(loc="upper center")


# ---- chapter 02 ----------------------------------------------------------------------------

def _sam2d_compute(rho, lr):
    return {"gd": toy.sam_trajectory(0.0, lr), "sam": toy.sam_trajectory(rho, lr)}


def _sam2d_plot(res, fig, rho, lr):
    ax = fig.subplots()
    xs, ys = torch.meshgrid(torch.linspace(-2, 2.5, 160), torch.linspace(-1.5, 1.5, 120), indexing="xy")
    z = toy.two_basins_2d(torch.stack([xs, ys], -1).double())
    cs = ax.contourf(xs, ys, z, levels=30, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="loss")
    for name, color in (("gd", "w"), ("sam", "r")):
        path = res[name]
        ax.plot(path[:, 0], path[:, 1], "-o", ms=2, color=color, label=f"{name.upper()} (end {tuple(round(float(v), 2) for v in path[-1])})")
    ax.set(xlabel="$w_1$", ylabel="$w_2$", title=f"GD vs SAM, rho={rho:g}, lr={lr:g}")
    ax.legend(loc="lower right")


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
        "noise": Slider(0.0, 3.0, 0.25, 1.0, "gradient noise"),
        "sharp_width": Slider(0.05, 0.4, 0.05, 0.15, "sharp-well width")}, "Noisy GD on a sharp and a flat well"),
    "sam2d": Widget(_sam2d_compute, _sam2d_plot, {
        "rho": Slider(0.0, 0.6, 0.05, 0.3, "rho"),
        "lr": Slider(0.01, 0.1, 0.01, 0.05, "step size")}, "GD and SAM on a 2-D loss"),
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
