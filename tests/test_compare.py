"""samlib.experiments.compare: chapter 07's statistics, checked against independent computations."""
import math

import pytest
import torch

from samlib import experiments as E
from samlib.experiments import compare as C


def _t_cdf_by_integration(t, df, points=400_001):
    x = torch.linspace(0, abs(t), points, dtype=torch.float64)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    half = float(torch.trapezoid(torch.exp(log_c - (df + 1) / 2 * torch.log1p(x ** 2 / df)), x))
    return 0.5 + half if t >= 0 else 0.5 - half


@pytest.mark.parametrize("df", [1, 2, 3, 7, 12, 30])
def test_student_t_matches_integration_and_the_table(df):
    for t in (-2.5, 0.3, 1.0, 4.0):
        assert C.student_t_cdf(t, df) == pytest.approx(_t_cdf_by_integration(t, df), abs=1e-6)
    assert C.student_t_quantile(0.975, df) == pytest.approx(E.T975[df - 1], abs=1e-3)
    assert C.student_t_quantile(0.5, df) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="quantile"):
        C.student_t_quantile(1.0, df)


def test_paired_test_by_hand():
    a = {0: 0.74, 1: 0.78, 2: 0.75, 3: 0.70}
    b = {0: 0.71, 1: 0.74, 2: 0.73, 3: 0.71, 9: 0.5}            # seed 9 has no partner: ignored
    r = C.paired_test(a, b)
    d = [0.03, 0.04, 0.02, -0.01]
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    assert r["seeds"] == [0, 1, 2, 3] and r["mean"] == pytest.approx(mean) and r["sd"] == pytest.approx(sd)
    half = E.T975[2] * sd / 2
    assert r["ci95"][0] == pytest.approx(mean - half, abs=1e-6) and r["ci95"][1] == pytest.approx(mean + half, abs=1e-6)
    t = mean / (sd / 2)
    assert r["p"] == pytest.approx(2 * (1 - _t_cdf_by_integration(t, 3)), abs=1e-6)


def test_holm_step_down():
    assert C.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert C.holm([0.5]) == [0.5] and C.holm([0.4, 0.6]) == [0.8, 0.8]


def test_minimum_detectable_effect_has_the_power_it_claims():
    n, sd = 8, 1.0
    mde = C.minimum_detectable_effect(sd, n)
    gen = torch.Generator().manual_seed(1)
    d = mde + sd * torch.randn(40_000, n, generator=gen, dtype=torch.float64)
    t = d.mean(1) / (d.std(1) / math.sqrt(n))
    power = float((t.abs() > C.student_t_quantile(0.975, n - 1)).double().mean())
    assert power == pytest.approx(0.8, abs=0.02)


def _record(method, hp, seed, test, val, ascent=None, loss=1.0):
    history = [{"epoch": 1, "epoch_time": 1.0, **({"ascent": ascent} if ascent is not None else {})}]
    final = {"test_acc": test, "val_acc_tail": val, "train_loss": loss, "test_acc_best": test}
    lr = hp.get("lr", 0.05)                                        # SAM-type runs share SGD's lr 0.05
    return {"config": {"method": method, "hparams": hp, "seed": seed, "lr": lr}, "noise_rate": 0.4, "history": history,
            "final": final}


def _arm(info_offset=0.0, info_scale=0.5, seeds=range(6)):
    """SAM's accuracy falls linearly in log(ascent) from 0.80 at ascent 0.01 to 0.70 at 0.16 (ascent = rho);
    InfoSAM at rho reaches ascent info_scale * rho and SAM's accuracy there, plus info_offset."""
    recs = []
    for s in seeds:
        noise = 0.002 * ((s * 7) % 5 - 2)                            # a seed effect shared by every method
        for rho in (0.01, 0.02, 0.04, 0.08, 0.16):
            acc = 0.80 - 0.025 * math.log2(rho / 0.01) + noise
            recs.append(_record("SAM", {"rho": rho}, s, acc, val=acc, ascent=rho))
            strength = info_scale * rho
            if 0.01 <= strength:
                info = 0.80 - 0.025 * math.log2(strength / 0.01) + noise + info_offset
                recs.append(_record("InfoSAM", {"rho": rho}, s, info, val=info, ascent=strength))
        recs.append(_record("SGD", {"lr": 0.05}, s, 0.75 + noise, val=0.75))
    return recs


def test_selection_oracle_and_selected_values():
    recs = _arm()
    chosen = C.select(recs)
    assert chosen[(0.4, "SAM")] == {"rho": 0.01} and chosen[(0.4, "InfoSAM")] == {"rho": 0.02}
    for r in recs:                                              # make validation disagree with test for SAM
        if r["config"]["method"] == "SAM":
            r["final"]["val_acc_tail"] = r["config"]["hparams"]["rho"]
    assert C.select(recs)[(0.4, "SAM")] == {"rho": 0.16} and C.select(recs, "test_acc")[(0.4, "SAM")] == {"rho": 0.01}
    values = C.selected_by_seed(recs)
    assert values["SAM"][0] == pytest.approx(0.80 - 0.025 * 4 + 0.002 * (0 - 2))


@pytest.mark.parametrize("offset", [0.0, 0.01])
def test_matched_strength_finds_a_reparametrized_rho(offset):
    recs = _arm(info_offset=offset)
    r = C.matched_strength(recs, "InfoSAM", "SAM", "ascent")
    assert r["n"] == 6 and not r["outside"]
    assert r["mean"] == pytest.approx(offset, abs=1e-12)        # on SAM's curve (0) or above it (+1 pp)
    # at equal rho InfoSAM looks better than SAM (a weaker perturbation), whatever the offset
    by_rho = C.paired_test(C.selected_by_seed(recs)["InfoSAM"], C.selected_by_seed(recs)["SAM"])
    assert by_rho["mean"] == pytest.approx(offset, abs=1e-12)   # here both select their best: same accuracy + offset


def test_matched_strength_reports_points_outside_the_reference_range():
    recs = [r for r in _arm() if not (r["config"]["method"] == "SAM" and r["config"]["hparams"]["rho"] < 0.04)]
    r = C.matched_strength(recs, "InfoSAM", "SAM", "ascent")
    assert r["n"] == 0 and r["outside"] == list(range(6)) and math.isnan(r["mean"])


def test_comparisons_interaction_and_report():
    arms = {"b128": _arm(info_offset=0.0), "b32": _arm(info_offset=0.01)}
    rows = C.comparisons(arms)
    labels = {(r["arm"], r["a"], r["b"]) for r in rows}
    assert labels == {(arm, a, b) for arm in arms for a, b in (("InfoSAM", "SAM"), ("SAM", "SGD"), ("InfoSAM", "SGD"))}
    adjusted = sorted(r["p_holm"] for r in rows)
    raw = sorted(r["p"] for r in rows)
    assert all(h >= p for h, p in zip(adjusted, raw))
    inter = C.interaction(arms, "InfoSAM", "SAM", "b32", "b128")
    assert inter["mean"] == pytest.approx(0.01, abs=1e-12)
    primary = C.primary_tests(arms)
    assert [r["arm"] for r in primary] == ["b128", "b32", "b32 minus b128"]
    text = C.report(arms)
    assert "ORACLE" in text and "InfoSAM − SAM" in text and "+1.00" in text


def test_anchor_extends_the_reference_curve_to_rho_zero():
    # InfoSAM at strength 0.5 * rho reaches below SAM's smallest rho (0.01) at rho = 0.01: outside SAM's grid
    recs = [r for r in _arm() if not (r["config"]["method"] == "InfoSAM" and r["config"]["hparams"]["rho"] != 0.01)]
    low = []
    for s in range(6):
        noise = 0.002 * ((s * 7) % 5 - 2)
        # SGD at SAM's lr is SAM at rho = 0: accuracy 0.82 + noise at ascent 0
        low.append(_record("SGD", {"lr": 0.05}, s, 0.82 + noise, val=0.70))
        # InfoSAM at ascent 0.005: on the straight line from (0, 0.82) to (0.01, 0.80), plus 0.3 pp
        low.append(_record("InfoSAM", {"rho": 0.01}, s, 0.81 + noise + 0.003, val=0.99, ascent=0.005))
    recs = [r for r in recs if r["config"]["method"] == "SAM"] + low
    plain = C.matched_strength(recs, "InfoSAM", "SAM", "ascent")
    assert plain["n"] == 0 and len(plain["outside"]) == 6
    anchor = C.rho_zero_anchor(recs)
    assert anchor == {"method": "SGD", "hparams": {"lr": 0.05}}     # SGD at SAM's learning rate
    anchored = C.matched_strength(recs, "InfoSAM", "SAM", "ascent", anchor=anchor)
    assert anchored["n"] == 6 and anchored["mean"] == pytest.approx(0.003, abs=1e-12)


def test_curve_residuals_cover_every_setting():
    recs = _arm(info_offset=-0.004)
    rows = C.curve_residuals(recs, "InfoSAM", "SAM", "ascent")
    assert [r["hparams"]["rho"] for r in rows] == [0.02, 0.04, 0.08, 0.16]      # info_scale 0.5: 0.01 is below 0.01
    assert all(r["mean"] == pytest.approx(-0.004, abs=1e-12) for r in rows)


def test_format_curve_residuals_marks_points_off_the_curve():
    # InfoSAM 0.3 pp above SAM's curve at every rho; at rho = 0.025 its strength (0.0125) lies inside SAM's range
    recs = []
    for s in range(4):
        noise = 0.002 * ((s * 7) % 5 - 2)
        for rho in (0.025, 0.05, 0.1, 0.2, 0.4):
            acc = 0.80 - 0.025 * math.log2(rho / 0.025) + noise
            recs.append(_record("SAM", {"rho": rho}, s, acc, val=acc, ascent=rho))
            info = 0.80 - 0.025 * math.log2(0.5 * rho / 0.025) + noise + 0.003
            recs.append(_record("InfoSAM", {"rho": rho}, s, info, val=info, ascent=0.5 * rho))
    text = C.format_curve_residuals({"b": recs}, methods=("InfoSAM",), proxies=("ascent",))
    row = text.strip().splitlines()[-1].split(" | ")
    assert row[:3] == ["| b", "InfoSAM", "ascent"]
    assert row[3] == "out"                                  # ascent 0.0125 < SAM's smallest, and no SGD anchor
    assert all(cell.startswith("+0.30 [+0.30, +0.30]") for cell in row[4:])
