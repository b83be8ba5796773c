"""Every widget's pure function is swept over each slider's whole range, headless; each renders."""
import math

import matplotlib
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
    """In a real kernel: the cell has exactly one output (the widget + its PNG); the widget's Output holds
    one figure, replaced (not added to) when a slider moves; an HTML export without widget state shows
    the PNG exactly once, and one with widget state shows it as the widget (never twice)."""
    import json
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
    figures = [s["state"]["outputs"] for s in state.values() if s["model_name"] == "OutputModel"]
    assert len(figures) == 1 and len(figures[0]) == 1 and "image/png" in figures[0][0]["data"]
    assert figures[0][0]["data"]["image/png"] != outs[0]["data"]["image/png"]  # redrawn at batch 1024

    def images(notebook):
        html, _ = HTMLExporter().from_notebook_node(notebook, resources={"metadata": {"name": "x", "path": ""}})
        return len(re.findall(r'<img[^>]+src="data:image/png', html)), html

    with_state, _ = images(nb)
    nb.metadata.pop("widgets")
    without_state, html = images(nb)
    assert with_state == 0 and without_state == 1
    assert outs[0]["data"]["image/png"][:100] in html


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
