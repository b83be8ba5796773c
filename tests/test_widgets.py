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
