"""Independent float64 computations of every variant's formula, on one flat parameter vector.

These follow the formulas in the issue/course literally (per-coordinate operations, global norms,
SGD with momentum written out), sharing no code with samlib.optim.
"""
import math

import torch

LR, MOMENTUM, WD = 0.1, 0.9, 1e-3


def sgd_momentum(w, g, buf):
    g = g + WD * w
    buf = g.clone() if buf is None else MOMENTUM * buf + g
    return w - LR * buf, buf


def _mean_and_noise(st, g, b, t):
    """m_0 = g_0, v_0 = 0; v_t = b v + (1 - b)(g_t - m_{t-1})^2, then m_t = b m + (1 - b) g_t."""
    if t == 0:
        st["m"], st["v"] = g.clone(), torch.zeros_like(g)
    else:
        st["v"] = b * st["v"] + (1 - b) * (g - st["m"]) ** 2
        st["m"] = b * st["m"] + (1 - b) * g


def run_reference(name, hp, w0, grad_fn, steps):
    """Return the trajectory of w and the final running statistics of variant ``name``."""
    w, buf, rho, st = w0.clone(), None, hp["rho"], {}
    traj = []
    for t in range(steps):
        g = grad_fn(t, w)
        if name == "SAM":
            eps = rho * g / g.norm()
        elif name == "ASAM":
            T = w.abs() + hp["eta"]
            eps = rho * T * T * g / (T * g).norm()
        elif name == "FisherSAM":
            F = 1 + hp["eta"] * g * g
            eps = rho * (g / F) / torch.sqrt((g * g / F).sum())
        elif name == "SSAM":
            st["fisher"] = g * g if t == 0 else hp["fisher_beta"] * st["fisher"] + (1 - hp["fisher_beta"]) * g * g
            if t % hp["mask_interval"] == 0:
                k = round((1 - hp["sparsity"]) * w.numel())
                order = sorted(range(w.numel()), key=lambda i: -float(st["fisher"][i]))
                st["mask"] = torch.zeros_like(w)
                for i in order[:k]:
                    st["mask"][i] = 1.0
            eps = rho * st["mask"] * g / (st["mask"] * g).norm()
        elif name == "VaSSO":
            st["d"] = g.clone() if t == 0 else (1 - hp["theta"]) * st["d"] + hp["theta"] * g
            eps = rho * st["d"] / st["d"].norm()
        elif name == "FriendlySAM":
            if t == 0:
                d, st["m"] = g.clone(), g.clone()
            else:
                d = g - hp["sigma"] * st["m"]
                st["m"] = hp["lmbda"] * st["m"] + (1 - hp["lmbda"]) * g
            eps = rho * d / d.norm()
        elif name == "InfoSAM":
            _mean_and_noise(st, g, hp["beta"], t)
            P = torch.tensor([1.0 if (mi * mi + vi) == 0 else max(hp["floor"], float(mi * mi / (mi * mi + vi)))
                              for mi, vi in zip(st["m"], st["v"])], dtype=g.dtype)
            base = st["m"] if hp.get("precondition_mean") else g
            eps = rho * P * base / (P * base).norm()
        elif name == "InverseVarianceSAM":
            _mean_and_noise(st, g, hp["beta"], t)
            damped = st["v"] + hp["damping"] * st["v"].mean()
            P = torch.ones_like(g) if float(damped.max()) == 0 else 1.0 / damped
            eps = rho * P * g / (P * g).norm()
        else:
            raise KeyError(name)
        assert math.isfinite(float(eps.norm()))
        w, buf = sgd_momentum(w, grad_fn(t, w + eps), buf)
        traj.append(w.clone())
    return traj, st
