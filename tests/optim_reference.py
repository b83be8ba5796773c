"""Independent float64 computations of every variant, written from the original papers and the
official code, never from samlib's own formulas.

Each variant is written as its official code is: a loop over parameters, per-parameter state
created at a parameter's first gradient, parameters without a gradient skipped, a global norm over
the parameters that have one. Sources:

* SAM: Foret et al., ICLR 2021, Algorithm 1 (eps = rho g / ||g||).
* ASAM: ``SamsungLabs/ASAM``, ``asam.py``, ``ascent_step``: parameters whose name contains
  "weight" get T = |w| + eta (grad *= T, norm, grad *= T, eps = rho grad / norm), the others T = 1.
* Fisher-SAM: Kim et al., ICML 2022, Algorithm 1: f = 1 + eta g^2, eps = gamma f^-1 g / sqrt(g^T f^-1 g).
* SSAM-F: ``Mi-Peng/Sparse-Sharpness-Aware-Minimization``, ``solver/sam.py``, ``SSAMF``: the mask keeps
  the top ``int(n (1 - sparsity))`` Fisher scores over all parameters, and eps = rho (mask * g) / ||g||.
* VaSSO: ``BingcongLi/VaSSO``, ``solver/vasso.py``: ema = g at a parameter's first step, else
  (1 - theta) ema + theta g; eps = rho ema / ||ema||.
* Friendly-SAM: ``nblt/F-SAM``, ``utils.py``, ``FriendlySAM.first_step``: momentum = g at the first step
  (and d = g); else d = g - sigma momentum, momentum = lmbda momentum + (1 - lmbda) g; eps = rho d / ||d||.
* InfoSAM and InverseVarianceSAM are the course's own rules: written from the formulas of chapter 06
  (``/work/shared/reference/paper.md``), per coordinate with Python scalars.
* The base step is ``torch.optim.SGD`` as its documentation writes it (weight decay, momentum, no dampening).

Where samlib deliberately differs from an official code (labelled [ours] in its docstrings), the
difference is applied here as a separate, named step, so a test shows that it is the only one.
"""
import math

import torch

LR, MOMENTUM, WD = 0.1, 0.9, 1e-3


def sgd_momentum(ws, grads, bufs):
    """torch.optim.SGD's documented update, per parameter; parameters without a gradient are skipped."""
    out = []
    for i, (w, g) in enumerate(zip(ws, grads)):
        if g is None:
            out.append(w)
            continue
        g = g + WD * w
        bufs[i] = g.clone() if bufs.get(i) is None else MOMENTUM * bufs[i] + g
        out.append(w - LR * bufs[i])
    return out


def _norm(tensors):
    return math.sqrt(sum(float((t * t).sum()) for t in tensors))


def ssam_official_mask(scores, sparsity):
    """SSAM-F's ``update_mask``: keep the top int(n (1 - sparsity)) scores over all parameters."""
    flat = torch.cat([s.flatten() for s in scores])
    keep = int(len(flat) * (1 - sparsity))
    mask = torch.zeros_like(flat)
    mask[torch.topk(flat, keep).indices] = 1.0
    out, i = [], 0
    for s in scores:
        out.append(mask[i:i + s.numel()].view_as(s))
        i += s.numel()
    return out


def _gain(m, v, floor, c):
    """Chapter 06's signal-to-noise gain per coordinate, with Python floats: max(floor, m^2/(m^2 + c v))."""
    out = [1.0 if mi * mi + vi == 0 else max(floor, mi * mi / (mi * mi + c * vi))
           for mi, vi in zip(m.flatten().tolist(), v.flatten().tolist())]
    return torch.tensor(out, dtype=m.dtype).view_as(m)


class Reference:
    """One variant's perturbation rule, per parameter, with per-parameter state."""

    def __init__(self, name, hp, weight_names=None):
        self.name, self.hp, self.state = name, hp, {}
        self.weight_names = weight_names     # ASAM: names of the parameters the official code scales
        self.t = 0

    def eps(self, ws, grads):
        hp, rho, live = self.hp, self.hp["rho"], [i for i, g in enumerate(grads) if g is not None]
        st = self.state
        if self.name == "SAM":
            norm = _norm([grads[i] for i in live])
            e = {i: rho * grads[i] / norm for i in live}
        elif self.name == "ASAM":
            scaled = {}
            for i in live:
                is_weight = self.weight_names is None or "weight" in self.weight_names[i]
                t_w = ws[i].abs() + hp["eta"] if is_weight else None
                scaled[i] = (grads[i] * t_w, t_w) if is_weight else (grads[i].clone(), None)
            norm = _norm([s for s, _ in scaled.values()])
            e = {i: rho * (s * t_w if t_w is not None else s) / norm for i, (s, t_w) in scaled.items()}
        elif self.name == "FisherSAM":
            f = {i: 1 + hp["eta"] * grads[i] ** 2 for i in live}
            denom = math.sqrt(sum(float((grads[i] * grads[i] / f[i]).sum()) for i in live))
            e = {i: rho * (grads[i] / f[i]) / denom for i in live}
        elif self.name == "SSAM":
            # the score: samlib's documented simplification [ours] (EMA of squared minibatch gradients,
            # refreshed every mask_interval steps) instead of SSAM-F's per-example Fisher sum
            for i in live:
                g2, old = grads[i] ** 2, st.setdefault(i, {}).get("score")
                st[i]["score"] = g2 if old is None else hp["fisher_beta"] * old + (1 - hp["fisher_beta"]) * g2
            if self.t % hp["mask_interval"] == 0:
                masks = ssam_official_mask([st[i]["score"] for i in live], hp["sparsity"])
                for i, m in zip(live, masks):
                    st[i]["mask"] = m
            norm = _norm([grads[i] for i in live])
            e = {i: rho * st[i]["mask"] * grads[i] / norm for i in live}               # official: / ||g||
            # samlib's OP view [ours]: normalize by ||M g|| (same direction, ||eps|| = rho)
            ratio = norm / _norm([st[i]["mask"] * grads[i] for i in live])
            e = {i: x * ratio for i, x in e.items()}
        elif self.name == "VaSSO":
            for i in live:
                if "ema" not in st.setdefault(i, {}):
                    st[i]["ema"] = grads[i].clone()
                else:
                    st[i]["ema"] = st[i]["ema"] * (1 - hp["theta"]) + grads[i] * hp["theta"]
            norm = _norm([st[i]["ema"] for i in live])
            e = {i: rho * st[i]["ema"] / norm for i in live}
        elif self.name == "FriendlySAM":
            d = {}
            for i in live:
                if "momentum" not in st.setdefault(i, {}):
                    st[i]["momentum"], d[i] = grads[i].clone(), grads[i].clone()
                else:
                    d[i] = grads[i] - st[i]["momentum"] * hp["sigma"]
                    st[i]["momentum"] = st[i]["momentum"] * hp["lmbda"] + grads[i] * (1 - hp["lmbda"])
            norm = _norm(list(d.values()))
            e = {i: rho * d[i] / norm for i in live}
        elif self.name in ("InfoSAM", "InverseVarianceSAM"):
            b, previous = hp["beta"], hp.get("gain_from", "current") == "previous"
            mean = hp.get("precondition_mean", False)
            c = (1 - b) / (1 + b) if mean else 1.0          # the noise of an EMA of draws is (1-b)/(1+b) of one draw's
            P = {}
            for i in live:
                new = "m" not in st.setdefault(i, {})
                if new:
                    st[i]["m"], st[i]["v"] = grads[i].clone(), torch.zeros_like(grads[i])
                if previous and self.name == "InfoSAM":      # gain fixed before the batch: m_{t-1}, v_{t-1}; 1 at t=0
                    P[i] = torch.ones_like(grads[i]) if new else _gain(st[i]["m"], st[i]["v"], hp["floor"], c)
                if not new:
                    noise = grads[i] - st[i]["m"]
                    st[i]["v"] = b * st[i]["v"] + (1 - b) * noise ** 2
                    st[i]["m"] = b * st[i]["m"] + (1 - b) * grads[i]
            if self.name == "InfoSAM":
                for i in live:
                    if not previous:
                        P[i] = _gain(st[i]["m"], st[i]["v"], hp["floor"], c)
                base = {i: st[i]["m"] if mean else grads[i] for i in live}
            else:
                v_all = torch.cat([st[i]["v"].flatten() for i in live])
                damping = hp["damping"] * float(v_all.mean())
                for i in live:
                    damped = st[i]["v"] + damping
                    P[i] = torch.where(damped > 0, 1.0 / damped, torch.ones_like(damped))
                base = {i: grads[i] for i in live}
            n = {i: P[i] * base[i] for i in live}
            norm = _norm(list(n.values()))
            e = {i: rho * n[i] / norm for i in live}
        else:
            raise KeyError(self.name)
        self.t += 1
        assert all(math.isfinite(float(x.norm())) for x in e.values())
        return [e.get(i) for i in range(len(grads))]


def run_reference(name, hp, ws0, grads_fn, steps, weight_names=None):
    """Trajectory of the parameters (a list per step) and the final per-parameter state of ``name``.

    ``grads_fn(t, ws)`` returns one gradient per parameter, or ``None`` for a parameter unused at step t.
    """
    ref, ws, bufs, traj = Reference(name, hp, weight_names), [w.clone() for w in ws0], {}, []
    for t in range(steps):
        grads = grads_fn(t, ws)
        eps = ref.eps(ws, grads)
        perturbed = [w if e is None else w + e for w, e in zip(ws, eps)]
        grads_at = grads_fn(t, perturbed)
        ws = sgd_momentum(ws, grads_at, bufs)
        traj.append([w.clone() for w in ws])
    return traj, ref.state
