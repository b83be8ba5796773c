"""Comparing optimizers over a course grid: selection on validation, the oracle, paired tests with a
multiplicity correction, power, and the rho-response (chapter 07).

A chapter-07 experiment is a set of *arms* (e.g. batch 128 and batch 32), each a :class:`Grid` whose
records live in its own folder. Within an arm every method trains on the same seeds, and seed ``s``
draws the same data, label noise, initialization and batch order for every method (and, with
``data_seed=None``, for every arm), so differences are paired by seed.
"""
from __future__ import annotations

import json
import math
import statistics

__all__ = ["student_t_cdf", "student_t_quantile", "paired_test", "holm", "minimum_detectable_effect", "settings",
           "metric", "mean_ascent", "select", "selected_by_seed", "comparisons", "interaction", "rho_response",
           "matched_strength", "curve_residuals", "rho_zero_anchor", "primary_tests", "matched_table",
           "format_selected", "format_oracle", "format_comparisons", "format_matched", "format_curve_residuals",
           "report"]


# ---- Student's t without scipy ------------------------------------------------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The ``p``-quantile of Student's t (bisection on :func:`student_t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"Invalid p {p!r}: a quantile needs 0 < p < 1.")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if student_t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


# ---- paired tests ---------------------------------------------------------------------------------

def paired_test(a: dict, b: dict) -> dict:
    """Seed-paired ``a - b`` (dicts seed -> value): mean, sd, 95% t-interval, two-sided p-value."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else math.nan
    sd = statistics.stdev(diffs) if n > 1 else math.nan
    if n > 1 and sd > 0:
        se = sd / math.sqrt(n)
        half = student_t_quantile(0.975, n - 1) * se
        p = 2.0 * (1.0 - student_t_cdf(abs(mean) / se, n - 1))
    elif n > 1:                      # identical differences in every seed: no spread to test against
        half, p = 0.0, (1.0 if mean == 0 else 0.0)
    else:
        half, p = math.inf, math.nan
    return {"seeds": seeds, "diffs": diffs, "mean": mean, "sd": sd, "n": n, "ci95": (mean - half, mean + half),
            "p": p}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (controls the family-wise error rate; Holm, 1979)."""
    pvalues = [1.0 if math.isnan(p) else p for p in pvalues]   # an untestable comparison counts as p = 1
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [math.nan] * len(pvalues), 0.0
    m = len(pvalues)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def minimum_detectable_effect(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true mean difference a two-sided paired t-test at level ``alpha`` detects with
    probability ``power`` (normal-shift approximation: (t_{1-alpha/2} + t_{power}) sd / sqrt(n))."""
    return (student_t_quantile(1 - alpha / 2, n - 1) + student_t_quantile(power, n - 1)) * sd / math.sqrt(n)


# ---- grouping and selection ------------------------------------------------------------------------

def _hp_key(hparams: dict) -> str:
    return json.dumps(hparams, sort_keys=True)


def settings(records: list[dict]) -> dict:
    """``{(noise_rate, method, hparams json): {seed: record}}``."""
    out: dict = {}
    for r in records:
        c = r["config"]
        out.setdefault((r["noise_rate"], c["method"], _hp_key(c["hparams"])), {})[c["seed"]] = r
    return out


def metric(record: dict, key: str) -> float:
    """A final metric of a record; ``ascent`` and friends are averaged over the training epochs."""
    if key in ("ascent", "ascent_linear", "eps_dim"):
        return mean_ascent(record, key)
    return record["final"][key]


def mean_ascent(record: dict, key: str = "ascent") -> float:
    """Mean over training of a per-epoch mean (epochs have equal numbers of steps); nan for SGD."""
    values = [h[key] for h in record["history"] if key in h]
    return statistics.fmean(values) if values else math.nan


def select(records: list[dict], key: str = "val_acc_tail") -> dict:
    """``{(noise_rate, method): hparams}``: per method, the setting with the best mean of ``key``
    over seeds. With ``key="test_acc"`` this is the *oracle* (it looks at the test set)."""
    best: dict = {}
    for (rate, method, hp), by_seed in settings(records).items():
        score = statistics.fmean(metric(r, key) for r in by_seed.values())
        if (rate, method) not in best or score > best[(rate, method)][0]:
            best[(rate, method)] = (score, json.loads(hp))
    return {k: v[1] for k, v in best.items()}


def selected_by_seed(records: list[dict], key: str = "test_acc", selection: str = "val_acc_tail") -> dict:
    """``{method: {seed: value of key}}`` at each method's selected setting (one noise rate per arm)."""
    chosen = select(records, selection)
    out: dict = {}
    for (rate, method, hp), by_seed in settings(records).items():
        if chosen[(rate, method)] == json.loads(hp):
            out[method] = {s: metric(r, key) for s, r in sorted(by_seed.items())}
    return out


# ---- comparisons -----------------------------------------------------------------------------------

def comparisons(arms: dict, baselines=("SAM", "SGD"), key: str = "test_acc", selection: str = "val_acc_tail") -> list[dict]:
    """Every method against each baseline, per arm, at validation-selected settings, paired by seed;
    Holm-adjusted p-values over the whole list (the family a forest plot shows)."""
    rows = []
    for arm, records in arms.items():
        values = selected_by_seed(records, key, selection)
        for base in baselines:
            if base not in values:
                continue
            for method in values:
                if method != base and not (base == "SAM" and method == "SGD"):
                    rows.append({"arm": arm, "a": method, "b": base, **paired_test(values[method], values[base])})
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
    return rows


def interaction(arms: dict, a: str, b: str, arm1: str, arm2: str, key: str = "test_acc",
                selection: str = "val_acc_tail") -> dict:
    """How much ``a - b`` changes from ``arm2`` to ``arm1``: the seed-paired (a-b)_arm1 - (a-b)_arm2."""
    v1, v2 = selected_by_seed(arms[arm1], key, selection), selected_by_seed(arms[arm2], key, selection)
    d1 = {s: v1[a][s] - v1[b][s] for s in set(v1[a]) & set(v1[b])}
    d2 = {s: v2[a][s] - v2[b][s] for s in set(v2[a]) & set(v2[b])}
    return {"a": a, "b": b, "arm1": arm1, "arm2": arm2, **paired_test(d1, d2)}


def rho_response(records: list[dict], method: str, proxy: str = "ascent") -> list[dict]:
    """Per setting of ``method`` (sorted by rho): mean and standard error over seeds of the test
    accuracy, and the mean of a strength ``proxy`` (``ascent``, ``ascent_linear`` or ``train_loss``)."""
    out = []
    for (rate, m, hp), by_seed in settings(records).items():
        if m != method:
            continue
        acc = [r["final"]["test_acc"] for r in by_seed.values()]
        out.append({"hparams": json.loads(hp), "seeds": sorted(by_seed), "test_acc": statistics.fmean(acc),
                    "se": statistics.stdev(acc) / math.sqrt(len(acc)) if len(acc) > 1 else math.nan,
                    "proxy": statistics.fmean(metric(r, proxy) for r in by_seed.values())})
    return sorted(out, key=lambda row: row["hparams"].get("rho", row["hparams"].get("lr", 0)))


def _interpolate(curve: list[tuple[float, float]], x: float) -> float | None:
    """The accuracy of a (proxy, accuracy) curve at ``x``: linear in log proxy between positive points,
    linear in the proxy on a segment that starts at proxy 0; None outside the curve's range."""
    if not curve or not curve[0][0] <= x <= curve[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            if x1 == x0:
                return y0
            t = (x - x0) / (x1 - x0) if x0 <= 0 else (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return curve[-1][1]


def _reference_curves(records: list[dict], reference: str, proxy: str, anchor: dict | None) -> dict:
    """``{seed: sorted [(proxy, test accuracy)]}`` along ``reference``'s settings (plus the anchor's runs)."""
    curves: dict = {}
    for (rate, m, hp), by_seed in settings(records).items():
        is_anchor = anchor is not None and m == anchor["method"] and json.loads(hp) == anchor["hparams"]
        if m == reference or is_anchor:
            for seed, r in by_seed.items():
                x = 0.0 if is_anchor and proxy in ("ascent", "ascent_linear") else metric(r, proxy)
                curves.setdefault(seed, []).append((x, r["final"]["test_acc"]))
    return {seed: sorted(points) for seed, points in curves.items()}


def matched_strength(records: list[dict], method: str = "InfoSAM", reference: str = "SAM", proxy: str = "ascent",
                     selection: str = "val_acc_tail", hparams: dict | None = None, anchor: dict | None = None) -> dict:
    """``method`` (at its selected setting, or at ``hparams``) against ``reference`` *at the same
    strength*: for each seed, the reference's test accuracy interpolated (linearly in log proxy,
    along that seed's own rho-response) at the proxy value ``method`` achieved, subtracted from
    ``method``'s accuracy. Seeds whose proxy lies outside the reference's range are left out and listed.

    ``anchor`` (e.g. ``{"method": "SGD", "hparams": {"lr": 0.05}}``) adds the run that *is* the
    reference at rho = 0 (SAM with rho = 0 takes SGD's steps): achieved ascent 0, so the curve extends
    down to zero strength, linearly in the proxy on that first segment.

    A residual interval that contains 0 means ``method`` sits on the reference's curve: its edge
    (or deficit) at equal rho is what a different rho would give the reference.
    """
    groups = settings(records)
    if hparams is None:
        hparams = select(records, selection)[next((rate, m) for rate, m, _ in groups if m == method)]
    mine = next(by_seed for (rate, m, hp), by_seed in groups.items() if m == method and json.loads(hp) == hparams)
    curves = _reference_curves(records, reference, proxy, anchor)
    residual, outside = {}, []
    for seed, r in mine.items():
        at = _interpolate(curves.get(seed, []), metric(r, proxy))
        if at is None:
            outside.append(seed)
        else:
            residual[seed] = (r["final"]["test_acc"], at)
    test = paired_test({s: v[0] for s, v in residual.items()}, {s: v[1] for s, v in residual.items()})
    return {"method": method, "reference": reference, "proxy": proxy, "hparams": hparams, "anchor": anchor,
            "outside": outside, **test}


def curve_residuals(records: list[dict], method: str = "InfoSAM", reference: str = "SAM", proxy: str = "ascent",
                    anchor: dict | None = None) -> list[dict]:
    """:func:`matched_strength` at every setting of ``method`` (the whole rho-response, not only the
    selected point): where its points lie relative to the reference's curve."""
    hps = sorted((json.loads(hp) for (rate, m, hp) in settings(records) if m == method),
                 key=lambda h: h.get("rho", 0))
    return [matched_strength(records, method, reference, proxy, hparams=hp, anchor=anchor) for hp in hps]


# ---- tables --------------------------------------------------------------------------------------

def _setting(hparams: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(hparams.items())) or "-"


def _ms(values, scale=100.0, digits=2) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}"


SELECTED_COLUMNS = (  # (record key, header, scale, digits)
    ("val_acc_tail", "val acc, last 3 evals", 100, 2),
    ("test_acc", "test acc, final", 100, 2),
    ("test_acc_val_best", "test acc, val-early-stopped", 100, 2),
    ("test_loss", "test NLL", 1, 3),
    ("test_ece", "test ECE", 100, 1),
    ("memorized_excess", "memorized − chance", 100, 1),
    ("top_hessian_eig", "top eigenvalue", 1, 0),
    ("ascent", "ascent L_B(w+ε)−L_B(w)", 1, 3),
)


def format_selected(arms: dict, selection: str = "val_acc_tail") -> str:
    """Markdown: each method at its selected setting, per arm (accuracies, ECE, memorization in %;
    mean ± sd over seeds)."""
    head = "| arm | method | setting | seeds | " + " | ".join(h for _, h, _, _ in SELECTED_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (4 + len(SELECTED_COLUMNS))]
    for arm, records in arms.items():
        chosen = select(records, selection)
        for (rate, method, hp), by_seed in settings(records).items():
            if chosen[(rate, method)] != json.loads(hp):
                continue
            cells = [_ms([metric(r, k) if k in r["final"] or k == "ascent" else math.nan for r in by_seed.values()], s, d)
                     for k, _, s, d in SELECTED_COLUMNS]
            lines.append(f"| {arm} | {method} | {_setting(json.loads(hp))} | {len(by_seed)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_oracle(arms: dict, selection: str = "val_acc_tail") -> str:
    """Markdown: the ORACLE (settings and epochs chosen on the test set) next to the honest choice."""
    lines = ["| arm | method | validation's setting | test acc | oracle setting (test-best) | oracle test acc | "
             "oracle − validation (pp) | test acc at the test-best epoch (oracle) |", "|---|---|---|---|---|---|---|---|"]
    for arm, records in arms.items():
        honest, oracle = select(records, selection), select(records, "test_acc")
        groups = settings(records)
        for (rate, method), hp in honest.items():
            h = groups[(rate, method, _hp_key(hp))]
            o = groups[(rate, method, _hp_key(oracle[(rate, method)]))]
            h_acc = statistics.fmean(r["final"]["test_acc"] for r in h.values())
            o_acc = statistics.fmean(r["final"]["test_acc"] for r in o.values())
            lines.append(f"| {arm} | {method} | {_setting(hp)} | {100 * h_acc:.2f} | {_setting(oracle[(rate, method)])} | "
                         f"{100 * o_acc:.2f} | {100 * (o_acc - h_acc):+.2f} | "
                         f"{_ms([r['final']['test_acc_best'] for r in h.values()])} |")
    return "\n".join(lines) + "\n"


def format_comparisons(rows: list[dict]) -> str:
    """Markdown table of paired differences (percentage points) with raw and Holm-adjusted p-values."""
    lines = ["| arm | difference | seeds | mean (pp) | 95% interval (pp) | p | p, Holm |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95"]
        holm_p = f"{r['p_holm']:.3f}" if "p_holm" in r else "–"
        lines.append(f"| {r.get('arm', '')} | {r['a']} − {r['b']} | {r['n']} | {100 * r['mean']:+.2f} | "
                     f"[{100 * lo:+.2f}, {100 * hi:+.2f}] | {r['p']:.3f} | {holm_p} |")
    return "\n".join(lines) + "\n"


# ---- chapter 07's pre-registered analysis ------------------------------------------------------------

def primary_tests(arms: dict, a: str = "InfoSAM", b: str = "SAM", large: str = "b128", small: str = "b32",
                  selection: str = "val_acc_tail") -> list[dict]:
    """The primary family: ``a - b`` in the ``large``- and ``small``-batch arms and their interaction
    (``small`` minus ``large``, paired by seed), Holm-adjusted over the three."""
    rows = []
    for arm in (large, small):
        values = selected_by_seed(arms[arm], "test_acc", selection)
        rows.append({"arm": arm, "a": a, "b": b, **paired_test(values[a], values[b])})
    inter = interaction(arms, a, b, small, large, selection=selection)
    rows.append({**inter, "arm": f"{small} minus {large}", "a": a, "b": b})
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
    return rows


def rho_zero_anchor(records: list[dict], method: str = "SAM") -> dict | None:
    """The SGD run that is ``method`` at rho = 0 (same learning rate), if the records have it."""
    lrs = {r["config"].get("lr") for r in records if r["config"]["method"] == method} - {None}
    for r in records:
        if r["config"]["method"] == "SGD" and r["config"]["hparams"].get("lr", r["config"].get("lr")) in lrs:
            return {"method": "SGD", "hparams": r["config"]["hparams"]}
    return None


def matched_table(arms: dict, methods=("InfoSAM", "VaSSO", "InverseVarianceSAM"), reference: str = "SAM",
                  proxies=("ascent", "train_loss"), selection: str = "val_acc_tail") -> list[dict]:
    """:func:`matched_strength` of every ``method`` against ``reference`` in every arm that has both:
    first on the reference's own rho grid (the pre-registered comparison), then with the curve
    extended to rho = 0 by :func:`rho_zero_anchor` (an extension added after the grid ran)."""
    rows = []
    for extended in (False, True):
        for arm, records in arms.items():
            present = {r["config"]["method"] for r in records}
            anchor = rho_zero_anchor(records, reference) if extended else None
            if extended and anchor is None:
                continue
            for method in methods:
                if method in present and reference in present:
                    for proxy in proxies:
                        rows.append({"arm": arm, **matched_strength(records, method, reference, proxy, selection,
                                                                    anchor=anchor)})
    return rows


def format_matched(rows: list[dict]) -> str:
    """Markdown table of :func:`matched_table` (percentage points)."""
    lines = ["| arm | method − SAM at matched strength | SAM's curve | strength proxy | seeds | mean (pp) | "
             "95% interval (pp) | seeds outside the curve |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95"]
        mean = f"{100 * r['mean']:+.2f}" if r["n"] else "–"
        ci = f"[{100 * lo:+.2f}, {100 * hi:+.2f}]" if r["n"] > 1 else "–"
        curve = "its ρ grid" if r["anchor"] is None else f"+ ρ = 0 (SGD, lr={r['anchor']['hparams'].get('lr', '')})"
        lines.append(f"| {r['arm']} | {r['method']} ({_setting(r['hparams'])}) | {curve} | {r['proxy']} | {r['n']} | "
                     f"{mean} | {ci} | {len(r['outside'])} |")
    return "\n".join(lines) + "\n"


def report(arms: dict, selection: str = "val_acc_tail") -> str:
    """Chapter 07's tables, all from the records: selected settings, the oracle, the primary family,
    matched strength, and the whole comparison family (Holm over each family)."""
    return "\n".join([
        "**Each method at its validation-selected setting** (mean ± sd over seeds; accuracies, ECE and memorization in %)\n",
        format_selected(arms, selection),
        "**ORACLE (looks at the test set; never used to choose)** next to the validation choice\n",
        format_oracle(arms, selection),
        "**Primary family** (Holm over these three)\n",
        format_comparisons(primary_tests(arms, selection=selection)),
        "**At matched strength** (each seed's SAM ρ-response interpolated at the method's achieved strength)\n",
        format_matched(matched_table(arms, selection=selection)),
        "**Every method against SAM and SGD** (Holm over the whole family)\n",
        format_comparisons(comparisons(arms, selection=selection)),
    ])


def format_curve_residuals(arms: dict, methods=("InfoSAM", "VaSSO", "InverseVarianceSAM"), reference: str = "SAM",
                           proxies=("ascent", "train_loss")) -> str:
    """Markdown: every setting of each method against the reference's curve (extended to rho = 0),
    per strength proxy: mean residual and 95% interval in percentage points ("out" where the point
    lies outside the curve's range in some seed)."""
    lines = ["| arm | method | proxy | " + " | ".join(f"ρ={r:g}" for r in _RHO_COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(_RHO_COLUMNS)]
    for arm, records in arms.items():
        present = {r["config"]["method"] for r in records}
        anchor = rho_zero_anchor(records, reference)
        for method in methods:
            if method not in present or reference not in present:
                continue
            for proxy in proxies:
                cells = {row["hparams"].get("rho"): row for row in curve_residuals(records, method, reference, proxy,
                                                                                     anchor)}
                text = []
                for rho in _RHO_COLUMNS:
                    row = cells.get(rho)
                    if row is None:
                        text.append("")
                    elif row["outside"] or row["n"] < 2:
                        text.append("out")
                    else:
                        lo, hi = row["ci95"]
                        text.append(f"{100 * row['mean']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]")
                lines.append(f"| {arm} | {method} | {proxy} | " + " | ".join(text) + " |")
    return "\n".join(lines) + "\n"


_RHO_COLUMNS = (0.025, 0.05, 0.1, 0.2, 0.4)
