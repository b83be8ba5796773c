"""Every widget's pure function is swept over each slider's whole range, headless; each renders."""
import math

import matplotlib
import numpy as np
import pytest
import torch

from samlib import widgets as W

matplotlib.use("Agg")


def _finite(obj):
    if torch.is_tensor(obj):
        return bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


# ---- the one-call display: a live widget whose bundle also holds the static figure (widgets engineer) ---

def test_show_bundle_holds_the_widget_and_its_static_png():
    import base64
    box = W.show("cost", precision="bf16")
    data = box._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data and "text/plain" in data
    png = base64.b64decode(data["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == box.static_png
    assert [c.value for c in box.children[1:-1]] == [128, 1, 1, "bf16", "local"]
    with pytest.raises(ValueError, match="precision"):
        W.show("cost", precision="fp8")
    with pytest.raises(ValueError, match="Unknown slider"):
        W.render("cost", batch_size=64)


@pytest.mark.parametrize("name", ["convergence", "results07", "results08", "cost"])
def test_every_slider_of_the_new_widgets_changes_the_figure(name):
    """What the browser test checks in the chapters, headless: each slider's two ends draw different figures."""
    sliders = W.WIDGETS[name].sliders
    base = W._png(name, W._values(W.WIDGETS[name], {}), None)
    for k, s in sliders.items():
        values = s.values()
        far = values[-1] if values[-1] != s.default else values[0]
        assert W._png(name, W._values(W.WIDGETS[name], {k: far}), None) != base, (name, k)


def test_a_kernel_shows_one_figure_and_html_falls_back_to_the_png(tmp_path):
    """In a real kernel: the cell has exactly one output (the widget + its PNG); the widget's Image holds
    the figure, replaced when a slider moves, and moving it prints nothing; an HTML export without widget
    state shows the PNG exactly once, and one with widget state shows it as the widget (never twice)."""
    import base64
    import os
    import pathlib
    import re

    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    root = pathlib.Path(W.__file__).resolve().parents[1]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from samlib import widgets\nbox = widgets.show('cost')\nbox"),
                nbformat.v4.new_code_cell("box.children[1].value = 1024")]
    env_path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = env_path
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    outs = nb.cells[0].outputs
    assert len(outs) == 1 and {"application/vnd.jupyter.widget-view+json", "image/png"} <= set(outs[0]["data"])
    assert nb.cells[1].outputs == []
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert not [s for s in state.values() if s["model_name"] == "OutputModel"]     # nbclient#312: see widgets.show
    figures = [s for s in state.values() if s["model_name"] == "ImageModel"]
    assert len(figures) == 1
    (buffer,) = [b for b in figures[0].get("buffers", []) if b["path"] == ["value"]]
    assert buffer["encoding"] == "base64"                                      # how nbclient saves binary state
    redrawn = base64.b64decode(buffer["data"])
    assert redrawn[:8] == b"\x89PNG\r\n\x1a\n"
    assert redrawn != base64.b64decode(outs[0]["data"]["image/png"])           # redrawn at batch 1024

    def images(notebook):
        html, _ = HTMLExporter().from_notebook_node(notebook, resources={"metadata": {"name": "x", "path": ""}})
        return len(re.findall(r'<img[^>]+src="data:image/png', html)), html

    with_state, _ = images(nb)
    nb.metadata.pop("widgets")
    without_state, html = images(nb)
    assert with_state == 0 and without_state == 1
    assert outs[0]["data"]["image/png"][:100] in html


# ---- the new widgets' pure functions, against independent computations (widgets engineer) ---------------

def test_convergence_curves_match_an_independent_presam_loop():
    """The window means equal a from-scratch preSAM loop (same noise order as the toy's), per step."""
    import numpy as np
    kappa, rho, lr = 4.0, 1.0, 0.06
    res = W.convergence_curves(kappa, rho, lr)
    runs, dim, a = 16, 10, 2.0
    H = W.CONVERGENCE_HORIZONS
    c = torch.logspace(0, math.log10(kappa), dim, dtype=torch.float64)
    for name, spectrum in (("inscribed", c / kappa), ("containing", c)):
        gen = torch.Generator().manual_seed(0)
        w = torch.full((runs, dim), 0.3, dtype=torch.float64)
        trace = []
        for _ in range(H[-1]):
            grad = w - a * torch.sin(w)
            trace.append(float((grad * grad).sum(-1).mean()))
            noisy = grad + torch.randn(runs, dim, generator=gen, dtype=torch.float64)
            n = spectrum * noisy                                     # C^{-1} g
            eps = rho * spectrum * n / n.norm(dim=-1, keepdim=True)  # rho C^{-2} g / ||C^{-1} g||
            shifted = w + eps
            w = w - lr * (shifted - a * torch.sin(shifted) + torch.randn(runs, dim, generator=gen, dtype=torch.float64))
        windows = [np.mean(trace[H[k - 1]:H[k]]) for k in range(1, len(H))]
        assert np.allclose(res["curves"][name], windows, rtol=1e-9), name
        assert float(eps.norm(dim=-1).max()) <= rho * res["Lambda"][name] + 1e-12   # ||eps|| <= Lambda rho
    # the theorem's terms, written out, and the bound holds for the measured average
    ell, sigma2 = 3.0, 10.0
    assert res["noise_term"] == pytest.approx(2 * ell * lr * sigma2)
    assert res["bias_term"]["containing"] == pytest.approx((2 + 4 * ell * lr) * ell ** 2 * kappa ** 2 * rho ** 2)
    assert res["running"]["inscribed"][-1] <= res["bound"]["inscribed"]


def test_convergence_curves_respond_as_the_chapter_says():
    flat = W.convergence_curves(1.0, 1.0, 0.04)
    assert np.array_equal(flat["curves"]["inscribed"], flat["curves"]["containing"])    # kappa = 1: one normalization
    zero = W.convergence_curves(8.0, 0.0, 0.04)
    assert np.array_equal(zero["curves"]["SGD"], zero["curves"]["containing"])          # rho = 0 is SGD, same noise
    big = W.convergence_curves(16.0, 1.0, 0.04)
    assert big["floor"]["containing"] > 1.5 * big["floor"]["inscribed"]                 # the radius, not the conditioning
    assert abs(big["floor"]["inscribed"] / big["floor"]["SGD"] - 1) < 0.3
    with pytest.raises(ValueError, match="lr"):
        W.convergence_curves(1.0, 1.0, 0.1)


def test_convergence_slider_move_is_cheap(monkeypatch):
    """Counted, not timed: a move runs at most three methods' worth of preSAM iterations (0.4-0.5 s of CPU on
    the course machine), and a move that keeps the step size reuses SGD's runs from the cache."""
    from samlib import toy
    real, iterations = toy.presam_sgd, []

    def counted(problem, T, *args, **kwargs):
        iterations.append(T * kwargs["runs"])
        return real(problem, T, *args, **kwargs)

    monkeypatch.setattr(toy, "presam_sgd", counted)
    W._presam_run.cache_clear()
    per_method = 16 * sum(W.CONVERGENCE_HORIZONS)
    W.convergence_curves(2.0, 1.5, 0.06)                    # nothing cached: SGD and both normalizations
    assert sum(iterations) == 3 * per_method
    iterations.clear()
    W.convergence_curves(4.0, 1.5, 0.06)                    # kappa moved: SGD comes from the cache
    assert sum(iterations) == 2 * per_method
    assert per_method <= 16 * 5000                          # the horizons stay a slider's budget


def _record(rate, method, hp, seed, val, test, task="classification"):
    metric = "acc" if task == "classification" else "miou"
    return {"config": {"method": method, "hparams": hp, "seed": seed, "task": task},
            "noise_rate": rate, "run_id": f"noise{rate}_{method}_{seed}",
            "final": {f"val_{metric}": val, f"test_{metric}": test},
            "history": [{"epoch": 1, "epoch_time": 1.0, f"test_{metric}": test - 0.1},
                        {"epoch": 2, "epoch_time": 1.0, f"test_{metric}": test}]}


def _write(folder, records):
    import json
    (folder / "records").mkdir(parents=True)
    for i, r in enumerate(records):
        (folder / "records" / f"{i:03d}.json").write_text(json.dumps(r), encoding="utf-8")


#: validation chooses SAM rho 0.1 and InfoSAM rho 0.05, while the test scores would choose the others
_SCORES = {("SGD", None): (0.55, 0.60), ("SAM", 0.05): (0.60, 0.70), ("SAM", 0.1): (0.65, 0.66),
           ("InfoSAM", 0.05): (0.70, 0.72), ("InfoSAM", 0.1): (0.50, 0.80)}


def _synthetic_results(root):
    recs = []
    for (method, rho), (val, test) in _SCORES.items():
        for seed in (0, 1, 2):
            for rate in (0.0, 0.4):
                spread = {"SGD": 0.01, "SAM": 0.02, "InfoSAM": 0.035}[method] * seed ** 2   # not a constant shift
                recs.append(_record(rate, method, {} if rho is None else {"rho": rho}, seed, val, test + spread - rate / 10))
    _write(root / "armA", recs)
    _write(root / "armB", [r for r in recs if r["config"]["method"] != "InfoSAM"])
    return root


def test_results_explorer_discovers_and_pairs_by_seed(tmp_path):
    from samlib.experiments import stats
    root = _synthetic_results(tmp_path)
    sliders = W.explorer_sliders(root)
    assert sliders["arm"].values() == ["armA", "armB"] and sliders["noise_rate"].values() == [0.0, 0.4]
    assert sliders["method"].values() == ["SGD", "SAM", "InfoSAM"] and sliders["method"].default == "InfoSAM"
    assert sliders["setting"].values() == [0, 1, 2] and sliders["noise_rate"].default == 0.4
    res = W.results_explorer(root, arm="armA", noise_rate=0.4, method="InfoSAM", setting=0)
    assert res["hparams"] == {"rho": 0.05} and res["is_selected"]                  # chosen on validation, not test
    assert res["curves"]["SAM"]["hparams"] == {"rho": 0.1}
    by = {row["b"]: row for row in res["paired"]}
    diffs = [(0.72 + 0.035 * s * s) - (0.66 + 0.02 * s * s) for s in (0, 1, 2)]   # InfoSAM(0.05) - SAM(0.1)
    mean = sum(diffs) / 3
    sd = (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5
    assert by["SAM"]["mean"] == pytest.approx(mean) and by["SAM"]["seeds"] == [0, 1, 2]
    assert by["SAM"]["ci95"][1] - mean == pytest.approx(stats.T975[1] * sd / 3 ** 0.5)
    assert np.allclose(res["curves"]["InfoSAM"]["mean"], [0.72 - 0.04 - 0.1 + 0.035 * 5 / 3, 0.72 - 0.04 + 0.035 * 5 / 3])
    other = W.results_explorer(root, arm="armA", noise_rate=0.4, method="InfoSAM", setting=2)
    assert other["hparams"] == {"rho": 0.1} and not other["is_selected"]
    assert {r["b"]: r for r in other["paired"]}["SAM"]["mean"] == pytest.approx(0.80 - 0.66 + (0.035 - 0.02) * 5 / 3)
    assert "missing" in W.results_explorer(root, arm="armB", method="InfoSAM")
    import matplotlib.pyplot as plt
    for r in (res, other, W.results_explorer(root, arm="armB", method="InfoSAM")):
        fig = plt.figure()
        W._explorer_plot(r, fig)
        plt.close(fig)


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    """A tiny grid run by the real runner (quick-mode size: 48 training images, 2 epochs, 2 seeds)."""
    from samlib import experiments as E
    root = tmp_path_factory.mktemp("tiny_results")
    grid = E.Grid(name="tiny", data=E.DataSpec(n_train=64, n_test=32, val_fraction=0.25),
                  train=dict(model="small_cnn", model_kwargs={"width": 4}, epochs=2, batch_size=16, lr=0.05, eval_every=1,
                             sharpness_examples=8, device="cpu"),
                  methods={"SGD": {}, "SAM": {"rho": [0.05]}, "InfoSAM": {"rho": [0.05, 0.1]}}, noise_rates=[0.4], seeds=[0, 1])
    E.run_grid(grid, root / "records_here")
    return root / "records_here"


def test_results_explorer_reads_what_the_runner_writes(tiny_grid):
    sliders = W.explorer_sliders(tiny_grid)
    assert set(sliders) == {"method", "setting"} and sliders["method"].values() == ["SGD", "SAM", "InfoSAM"]
    res = W.results_explorer(tiny_grid, method="InfoSAM")
    assert res["task"] == "classification" and res["curve_metric"] == "test_acc"
    assert [(r["a"], r["b"], r["seeds"]) for r in res["paired"]] == [("InfoSAM", "SAM", [0, 1]), ("InfoSAM", "SGD", [0, 1])]
    assert res["curves"]["InfoSAM"]["epochs"] == [1, 2]


def test_cost_model_counts_match_torch():
    """The ResNet-18 counts the cost model uses, recounted: parameters, FLOPs, saved activations."""
    from torch.utils.flop_counter import FlopCounterMode

    from samlib.models import ResNet18, count_parameters
    torch.manual_seed(0)
    model = ResNet18()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    params = {p.data_ptr() for p in model.parameters()}
    saved = []

    def pack(t):
        if t.data_ptr() not in params:
            saved.append(t.numel() * t.element_size())
        return t

    with FlopCounterMode(display=False) as counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        forward = counter.get_total_flops()
        loss.backward()
    counts = W.RESNET18_CIFAR
    assert count_parameters(model) == counts["params"]
    assert forward / 2 == pytest.approx(counts["forward_flops"]) and counter.get_total_flops() / 2 == pytest.approx(counts["train_flops"])
    assert sum(saved) / 2 == pytest.approx(counts["activation_bytes"])
    assert sum(1 for m in model.modules() if not list(m.children())) == counts["layers"]


def test_cost_model_structure():
    P = W.RESNET18_CIFAR["params"]
    one = W.sam_cost(128)
    mem = one["memory"]
    assert sum(mem["SAM"].values()) - sum(mem["SGD"].values()) == pytest.approx(3 * 4 * P - (mem["SGD"]["activations"] - mem["SAM"]["activations"]))
    assert mem["InfoSAM"]["SAM buffers"] - mem["SAM"]["SAM buffers"] == 2 * 4 * P        # m and v
    assert one["time"]["SAM"]["compute"] == pytest.approx(2 * one["time"]["SGD"]["compute"])   # two passes
    ratios = [W.sam_cost(b)["ratio"]["SAM"] for b in (32, 128, 1024)]
    assert all(r > 2 for r in ratios) and ratios[0] > ratios[1] > ratios[2]            # towards 2 as the batch grows
    chunked = W.sam_cost(128, chunks=4)
    assert chunked["memory"]["SAM"]["activations"] == pytest.approx(one["memory"]["SAM"]["activations"] / 4)
    assert chunked["time"]["SAM"]["launches"] == pytest.approx(4 * one["time"]["SAM"]["launches"])
    assert one["time"]["SAM"]["communication"] == 0.0
    local, synced = W.sam_cost(256, workers=4), W.sam_cost(256, workers=4, perturbation="synced")
    assert local["time"]["SAM"]["communication"] > 0
    assert synced["time"]["SAM"]["communication"] == pytest.approx(2 * local["time"]["SAM"]["communication"])
    assert synced["time"]["SGD"] == local["time"]["SGD"]
    half = W.sam_cost(128, precision="bf16")
    assert half["memory"]["SGD"]["activations"] == pytest.approx(one["memory"]["SGD"]["activations"] / 2)
    assert W.sam_cost(128, precision="fp16")["time"]["SAM"]["optimizer"] > half["time"]["SAM"]["optimizer"]  # unscaling
    with pytest.raises(ValueError, match="precision"):
        W.sam_cost(128, precision="fp8")
    with pytest.raises(ValueError, match="batch"):
        W.sam_cost(4, workers=8)


@pytest.mark.parametrize("name", list(W.WIDGETS))
def test_sweep_every_slider_over_its_range(name):
    w = W.WIDGETS[name]
    defaults = {k: s.default for k, s in w.sliders.items()}
    for slider, values in W.slider_values(name).items():
        assert values[0] == w.sliders[slider].low and values[-1] == pytest.approx(w.sliders[slider].high)
        for v in values:
            result = w.compute(**{**defaults, slider: v})
            assert _finite(result), (name, slider, v)


@pytest.mark.parametrize("name", list(W.WIDGETS))
def test_render_and_build_widget(name):
    import matplotlib.pyplot as plt
    fig = W.render(name)
    assert fig.axes and all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes if ax.get_label() != "<colorbar>")
    plt.close(fig)
    box = W.show(name)
    assert len(box.children) == 2 + len(W.WIDGETS[name].sliders)


def test_widget_results_respond_to_sliders():
    low = W.WIDGETS["landscape"].compute(noise=0.0, sharp_width=0.15)
    high = W.WIDGETS["landscape"].compute(noise=3.0, sharp_width=0.15)
    assert high["sharp"] < low["sharp"]  # noise empties the sharp well
    clean = W.WIDGETS["infosam"].compute(noise=0.0, beta=0.9)
    assert torch.allclose(clean["SAM"], torch.ones_like(clean["SAM"]))


def test_every_widget_is_shown_in_a_chapter():
    """tests/test_browser.py drives the widgets that notebooks show: each widget must be shown somewhere."""
    import json
    import pathlib
    import re
    chapters = pathlib.Path(__file__).resolve().parents[1] / "chapters"
    code = "\n".join("".join(c["source"]) for p in chapters.rglob("*.ipynb")
                     for c in json.loads(p.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code")
    shown = set(re.findall(r"""\bwidgets\.show\(\s*["'](\w+)["']""", code))
    assert shown <= set(W.WIDGETS), f"chapters show unknown widgets: {shown - set(W.WIDGETS)}"
    assert set(W.WIDGETS) <= shown, f"widgets no chapter shows (so no browser test drives them): {set(W.WIDGETS) - shown}"
