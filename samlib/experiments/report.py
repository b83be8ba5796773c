"""A grid's summary as Markdown tables, ``summary.json``/``summary.md`` and a figure of test curves.

No torch; matplotlib is imported only by :func:`plot_summary`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .stats import fmt, load_records, mean_curve, metric_keys, summarize_records, write_json_atomic

__all__ = ["summarize", "format_table", "format_paired", "format_summary", "plot_summary"]


def summarize(out_dir: str | Path | None, records: list[dict] | None = None, write: bool = True) -> dict:
    """:func:`~samlib.experiments.stats.summarize_records` of ``records`` (default: every record under
    ``out_dir``). Writes ``summary.json`` and ``summary.md`` into ``out_dir`` unless ``write=False``
    or ``out_dir`` is not an existing folder."""
    summary = summarize_records(load_records(out_dir) if records is None else records)
    if write and out_dir is not None and Path(out_dir).is_dir():
        write_json_atomic(Path(out_dir) / "summary.json", summary)
        (Path(out_dir) / "summary.md").write_text(format_summary(summary), encoding="utf-8")
    return summary


def _cell(key: str, mean_sd: tuple[float, float]) -> str:
    if key == "top_hessian_eig":  # a curvature, not a fraction
        return " ± ".join(f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}" for v in mean_sd)
    return f"{100 * mean_sd[0]:.2f} ± {100 * mean_sd[1]:.2f}"


def format_paired(rows: list[dict]) -> str:
    """Markdown table of :func:`~samlib.experiments.stats.paired_differences` (percentage points)."""
    lines = ["| noise | difference | seeds | mean (pp) | 95% interval (pp) | per seed (pp) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95"]
        per_seed = ", ".join(f"{100 * d:+.2f}" for d in r["diffs"])
        lines.append(f"| {fmt(r['noise_rate'])} | {r['a']} − {r['b']} | {len(r['seeds'])} | {100 * r['mean']:+.2f} | "
                     f"[{100 * lo:+.2f}, {100 * hi:+.2f}] | {per_seed} |")
    return "\n".join(lines) + "\n"


def format_table(rows: list[dict], title: str | None = None) -> str:
    """Markdown table of summary rows: metrics in %, mean ± std over seeds, seconds per epoch."""
    if not rows:
        return ""
    keys = metric_keys({k: 0 for row in rows for k in row})  # e.g. `memorized` exists only with label noise
    head = "| noise | method | hyperparameters | seeds | " + " | ".join(keys) + " | s/epoch |"
    lines = ([f"### {title}", ""] if title else []) + [head, "|" + "---|" * (5 + len(keys))]
    for r in rows:
        hp = ", ".join(f"{k}={fmt(v)}" for k, v in r["hparams"].items()) or "-"
        cells = " | ".join(_cell(k, r[k]) if k in r else "–" for k in keys)
        lines.append(f"| {fmt(r['noise_rate'])} | {r['method']} | {hp} | {len(r['seeds'])} | {cells} | "
                     f"{r['epoch_time'][0]:.2f} |")
    return "\n".join(lines) + "\n"


def format_summary(summary: dict) -> str:
    """Markdown: the validation-selected setting per method, paired differences, every setting."""
    paired = ""
    if summary.get("paired"):
        paired = "\n### Paired differences at the selected settings (95% t-interval over seeds)\n\n" + format_paired(summary["paired"])
    title = f"Selected by mean {summary['selection_metric']} (metrics in %, mean ± std over seeds)"
    return format_table(summary["selected"], title) + paired + "\n" + format_table(summary["rows"], "All settings")


def plot_summary(out_dir: str | Path, metric: str = "test_acc") -> Path:
    """Test-metric curves (mean over seeds) per method and noise rate; saves ``DIR/curves.png``."""
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules:  # nobody chose a backend yet (the CLI): draw off-screen
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = load_records(out_dir)
    rates = sorted({r["noise_rate"] for r in records})
    fig, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 3.6), squeeze=False)
    for ax, rate in zip(axes[0], rates):
        curves: dict = {}
        for r in records:
            if r["noise_rate"] == rate and metric in r["final"]:
                label = r["config"]["method"] + "".join(f" {k}={fmt(v)}" for k, v in r["config"]["hparams"].items())
                curves.setdefault(label, []).append(r)
        for label, runs in curves.items():
            epochs, mean = mean_curve(runs, metric)
            ax.plot(epochs, [100 * m for m in mean], label=label)
        ax.set(xlabel="epoch", ylabel=f"{metric.replace('_', ' ')} (%)", title=f"label noise {rate:.0%}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out_dir) / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
