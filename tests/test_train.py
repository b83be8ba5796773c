"""samlib.train and samlib.experiments: one loop for every method, records, resumable grids."""
import json
import math

import pytest
import torch

from samlib import experiments as E
from samlib.experiments import __main__ as cli, runner
from samlib.data import load_fashion_mnist
from samlib.train import TrainConfig, evaluate, segmentation_scores, train


@pytest.fixture(scope="module")
def tiny():
    x, y = load_fashion_mnist("train", subset=True)
    xt, yt = load_fashion_mnist("test", subset=True)
    return (x[:256], y[:256]), (xt[:128], yt[:128])


def _config(method="SGD", **kw):
    base = dict(method=method, model="small_cnn", model_kwargs={"width": 4}, epochs=2, batch_size=64, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("method,hp", [("SGD", {}), ("SAM", {"rho": 0.1}), ("InfoSAM", {"rho": 0.1})])
def test_train_records_history_and_is_reproducible(tiny, tmp_path, method, hp):
    (x, y), test = tiny
    r1 = train(_config(method, hparams=hp), (x, y), test, record_path=tmp_path / "r.json", progress=False)
    r2 = train(_config(method, hparams=hp), (x, y), test, progress=False)
    assert len(r1["history"]) == 2
    row = r1["history"][-1]
    for key in ("epoch", "lr", "epoch_time", "train_loss", "train_acc", "test_loss", "test_acc"):
        assert key in row
    strip = [{k: v for k, v in h.items() if k != "epoch_time"} for h in r1["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "epoch_time"} for h in r2["history"]]
    saved = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert saved["config"]["method"] == method and saved["environment"]["torch"] == torch.__version__
    assert saved["final"]["test_acc"] == row["test_acc"]
    assert row["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine schedule ends at 0


def test_bn_running_stats_updated_once_per_sam_step(tiny):
    (x, y), _ = tiny
    record = train(_config("SAM", hparams={"rho": 0.1}, epochs=1), (x, y), progress=False)
    bn = [m for m in record["model"].modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    assert int(bn.num_batches_tracked) == 256 // 64


def test_label_noise_run_tracks_memorization(tiny):
    (x, y), test = tiny
    noisy = (y + 1) % 10
    r = train(_config(epochs=1), (x, noisy, y), test, progress=False)
    for key in ("train_clean_acc", "train_noisy_acc", "memorized"):
        assert 0.0 <= r["final"][key] <= 1.0


def test_segmentation_run_reports_miou():
    from samlib.data import fashion_scenes
    xs, ms = fashion_scenes(32, seed=0)
    xt, mt = fashion_scenes(16, seed=1)
    cfg = TrainConfig(method="SAM", hparams={"rho": 0.05}, model="unet", model_kwargs={"width": 4},
                      task="segmentation", epochs=1, batch_size=16, device="cpu")
    r = train(cfg, (xs, ms), (xt, mt), num_classes=11, progress=False)
    assert 0.0 <= r["final"]["test_miou"] <= 1.0 and 0.0 <= r["final"]["test_pixel_acc"] <= 1.0


def test_segmentation_scores_known_confusion():
    conf = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    s = segmentation_scores(conf)
    assert s["pixel_acc"] == pytest.approx(5 / 6)
    assert s["miou"] == pytest.approx((3 / 4 + 2 / 3) / 2)  # class 2 absent: excluded


def test_evaluate_matches_manual_accuracy(tiny):
    (x, y), _ = tiny
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    scores = evaluate(model, x, y, batch_size=100)
    manual = (model(x.float().div(255)).argmax(1) == y).float().mean()
    assert scores["acc"] == pytest.approx(float(manual))


def test_train_config_errors(tiny):
    (x, y), _ = tiny
    with pytest.raises(ValueError, match="Unknown method 'Adam'"):
        train(_config("Adam"), (x, y), progress=False)
    with pytest.raises(ValueError, match="num_classes"):
        train(_config(), (x, y), num_classes=5, progress=False)
    with pytest.raises(ValueError, match="SGD takes no hparams"):
        _config("SGD", hparams={"rho": 0.1}).validate()
    with pytest.raises(ValueError, match="schedule"):
        _config(schedule="linear").validate()


def _tiny_grid(**kw):
    g = dict(name="t", data=E.DataSpec(n_train=160, n_test=64),
             train=dict(model="small_cnn", model_kwargs={"width": 4}, epochs=1, batch_size=32, device="cpu"),
             methods={"SGD": {}, "SAM": {"rho": [0.05, 0.1]}}, noise_rates=[0.0, 0.4], seeds=[0, 1])
    g.update(kw)
    return E.Grid(**g)


def test_grid_runs_resumes_and_summarizes(tmp_path, monkeypatch):
    grid = _tiny_grid()
    calls = []
    real_train = runner.train

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # an interruption mid-grid
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runner, "train", flaky)
    with pytest.raises(KeyboardInterrupt):
        E.run_grid(grid, tmp_path, progress=False, log=lambda *_: None)
    assert len(list((tmp_path / "records").glob("*.json"))) == 3
    assert not list((tmp_path / "records").glob("*.tmp"))
    summary = E.run_grid(grid, tmp_path, progress=False, log=lambda *_: None)
    assert len(calls) == 4 + 9  # the 3 finished runs were not redone
    assert len(list((tmp_path / "records").glob("*.json"))) == 12

    monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("a finished run was re-run"))
    E.run_grid(grid, tmp_path, progress=False, log=lambda *_: None)

    records = E.load_records(tmp_path)
    row = next(r for r in summary["rows"] if r["method"] == "SAM" and r["hparams"] == {"rho": 0.1}
               and r["noise_rate"] == 0.4)
    accs = [r["final"]["test_acc"] for r in records if r["config"]["method"] == "SAM"
            and r["config"]["hparams"] == {"rho": 0.1} and r["noise_rate"] == 0.4]
    assert len(accs) == 2
    mean = sum(accs) / 2
    std = (sum((a - mean) ** 2 for a in accs) / 1) ** 0.5
    assert row["test_acc"] == pytest.approx((mean, std))
    assert "±" in (tmp_path / "summary.md").read_text(encoding="utf-8")
    # rho is selected on validation accuracy, per noise rate and method
    for sel in summary["selected"]:
        rivals = [r for r in summary["rows"] if r["method"] == sel["method"] and r["noise_rate"] == sel["noise_rate"]]
        assert sel["val_acc"][0] == max(r["val_acc"][0] for r in rivals)


def test_grid_noise_is_shared_across_methods_and_seeds():
    d1 = E.prepare_data(E.DataSpec(n_train=200, n_test=10), 0.4)
    d2 = E.prepare_data(E.DataSpec(n_train=200, n_test=10), 0.4)
    x, y, clean = d1["train"]
    assert torch.equal(y, d2["train"][1])
    flipped = (y != clean).float().mean()
    assert 0.35 < flipped < 0.45
    xv, yv = d1["val"]
    assert len(yv) == 20
    val_noise = 1 - float((yv == E.prepare_data(E.DataSpec(n_train=200, n_test=10), 0.0)["val"][1]).float().mean())
    assert 0.15 < val_noise < 0.65  # validation is noisy like training, not all-noisy or all-clean
    assert torch.equal(d1["test"][1], d2["test"][1])


def test_grid_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown method"):
        E.run_grid(_tiny_grid(methods={"Adamw": {}}), tmp_path)
    with pytest.raises(ValueError, match="noise rate"):
        E.run_grid(_tiny_grid(noise_rates=[1.0]), tmp_path)
    with pytest.raises(ValueError, match="Unknown dataset"):
        E.prepare_data(E.DataSpec(dataset="mnist"))


def test_cli_grid_and_summarize(tmp_path, capsys):
    out = tmp_path / "g"
    E.main(["grid", "--methods", "SGD", "VaSSO:rho=0.05;theta=0.5", "--noise", "0.2", "--seeds", "0",
            "--n-train", "96", "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--out", str(out)])
    assert (out / "curves.png").exists() and (out / "summary.md").exists()
    assert len(E.load_records(out)) == 2
    E.main(["summarize", str(out)])
    assert "VaSSO" in capsys.readouterr().out


def test_parse_method():
    assert cli._parse_method("InfoSAM:rho=0.05,0.1;beta=0.9") == ("InfoSAM", {"rho": [0.05, 0.1], "beta": [0.9]})
    assert cli._parse_method("SGD") == ("SGD", {})


def test_readme_demo_runs_in_quick_mode(tmp_path, capsys):
    summary = E.main(["demo", "--out", str(tmp_path / "demo")])
    assert {r["method"] for r in summary["rows"]} == {"SGD", "SAM", "InfoSAM"}
    assert (tmp_path / "demo" / "curves.png").exists()
    assert "± " in capsys.readouterr().out


def test_shards_split_the_grid_and_merge(tmp_path):
    grid = _tiny_grid(noise_rates=[0.4])
    ids = [E.run_id(rate, c) for rate, c in grid.runs()]
    E.run_grid(grid, tmp_path, progress=False, log=lambda *_: None, shard=(1, 2))
    done = sorted(p.stem for p in (tmp_path / "records").glob("*.json"))
    assert done == sorted(ids[1::2])
    summary = E.run_grid(grid, tmp_path, progress=False, log=lambda *_: None, shard=(0, 2))
    assert sorted(p.stem for p in (tmp_path / "records").glob("*.json")) == sorted(ids)
    assert sum(len(r["seeds"]) for r in summary["rows"]) == len(ids)
    with pytest.raises(ValueError, match="shard"):
        E.run_grid(grid, tmp_path, shard=(2, 2))
    with pytest.raises(SystemExit):
        E.main(["run", "x.json", "--out", str(tmp_path), "--shard", "3"])


def _fake_record(method, hp, seed, rate, test_acc, val_acc):
    return {"config": {"method": method, "hparams": hp, "seed": seed}, "noise_rate": rate,
            "final": {"val_acc": val_acc, "test_acc": test_acc}, "history": [{"epoch_time": 1.0}]}


def test_paired_differences_use_selected_settings_and_pair_by_seed():
    recs = []
    for seed, (sgd, sam_a, sam_b, info) in enumerate([(0.70, 0.75, 0.60, 0.76), (0.72, 0.78, 0.61, 0.77),
                                                      (0.71, 0.74, 0.62, 0.77)]):
        recs += [_fake_record("SGD", {}, seed, 0.4, sgd, 0.5), _fake_record("InfoSAM", {"rho": 0.1}, seed, 0.4, info, 0.5),
                 _fake_record("SAM", {"rho": 0.1}, seed, 0.4, sam_a, 0.6),   # selected on validation
                 _fake_record("SAM", {"rho": 0.5}, seed, 0.4, sam_b, 0.4)]
    summary = E.summarize("/nonexistent", recs)
    by_pair = {(p["a"], p["b"]): p for p in summary["paired"]}
    sam_sgd = by_pair[("SAM", "SGD")]
    assert sam_sgd["diffs"] == pytest.approx([0.05, 0.06, 0.03])
    d = torch.tensor(sam_sgd["diffs"], dtype=torch.float64)
    half = 4.3027 * float(d.std()) / 3 ** 0.5
    assert sam_sgd["ci95"] == pytest.approx((float(d.mean()) - half, float(d.mean()) + half))
    assert by_pair[("InfoSAM", "SAM")]["diffs"] == pytest.approx([0.01, -0.01, 0.03])
    assert "InfoSAM − SAM" in E.format_summary(summary)


def test_t_table_matches_the_student_t_distribution():
    # integrate the Student-t density from 0 to t_{0.975, df}: the mass must be 0.475
    for df in (1, 2, 3, 5, 10, 30):
        t = E.T975[df - 1]
        x = torch.linspace(0, t, 200001, dtype=torch.float64)
        log_c = (torch.lgamma(torch.tensor((df + 1) / 2, dtype=torch.float64)) -
                 torch.lgamma(torch.tensor(df / 2, dtype=torch.float64)) - 0.5 * math.log(df * math.pi))
        pdf = torch.exp(log_c - (df + 1) / 2 * torch.log1p(x ** 2 / df))
        assert float(torch.trapezoid(pdf, x)) == pytest.approx(0.475, abs=2e-5), df


def test_final_sharpness_is_recorded_and_matches_the_diagnostic(tiny):
    from samlib.diagnostics import data_loss, top_hessian_eigenvalue
    (x, y), _ = tiny
    cfg = TrainConfig(model="small_cnn", model_kwargs={"width": 4}, epochs=1, batch_size=32, device="cpu",
                      sharpness_examples=64)
    rec = train(cfg, (x, y), progress=False)
    eig = rec["final"]["top_hessian_eig"]
    model = rec["model"]
    ref, _ = top_hessian_eigenvalue(data_loss(model, x[:64], y[:64]), list(model.parameters()), iters=20, tol=1e-3)
    assert eig == pytest.approx(ref, rel=1e-6) and eig > 0
    with pytest.raises(ValueError, match="sharpness_examples"):
        TrainConfig(sharpness_examples=-1).validate()


def test_scene_size_scales_scenes():
    d = E.prepare_data(E.DataSpec(dataset="fashion_scenes", n_train=20, n_test=8, scene_size=32), 0.0)
    assert d["train"][0].shape[-2:] == (32, 32) and d["test"][1].shape[-2:] == (32, 32)
    fg = float((d["train"][1] > 0).float().mean())
    assert 0.15 < fg < 0.8  # garments still fill a good part of the canvas
    with pytest.raises(ValueError, match="scene_size"):
        E.prepare_data(E.DataSpec(dataset="fashion_scenes", n_train=4, scene_size=30))


def test_eval_every_evaluates_on_schedule_and_at_the_end(tiny):
    train_data, test_data = tiny
    cfg = TrainConfig(model="small_cnn", model_kwargs={"width": 4}, epochs=5, batch_size=64, device="cpu", eval_every=2)
    rec = train(cfg, train_data, test_data, progress=False)
    assert [h["epoch"] for h in rec["history"] if "test_acc" in h] == [2, 4, 5]
    assert all("train_loss" in h for h in rec["history"]) and "test_acc" in rec["final"]
    with pytest.raises(ValueError, match="eval_every"):
        TrainConfig(eval_every=0).validate()


def test_saved_models_reproduce_their_records(tmp_path):
    grid = _tiny_grid(noise_rates=[0.4], methods={"SAM": {"rho": [0.05]}}, save_models=[1])
    E.run_grid(grid, tmp_path, progress=False, log=lambda *_: None)
    assert sorted(p.name for p in (tmp_path / "models").glob("*")) == ["noise0.4_SAM-rho0.05_seed1.pt"]
    rec = next(r for r in E.load_records(tmp_path) if r["config"]["seed"] == 1)
    assert (rec["num_classes"], rec["in_channels"]) == (10, 1)  # load_model rebuilds the architecture from these
    model = E.load_model(tmp_path, rec)
    xt, yt = E.prepare_data(grid.data, 0.4)["test"]
    assert evaluate(model, xt, yt)["acc"] == rec["final"]["test_acc"]
    with pytest.raises(FileNotFoundError, match="save_models"):
        E.load_model(tmp_path, next(r for r in E.load_records(tmp_path) if r["config"]["seed"] == 0))


def test_mean_curve_averages_evaluated_epochs():
    recs = [{"history": [{"epoch": 1}, {"epoch": 2, "test_acc": 0.5}, {"epoch": 3, "test_acc": 0.7}]},
            {"history": [{"epoch": 1}, {"epoch": 2, "test_acc": 0.3}, {"epoch": 3, "test_acc": 0.9}]}]
    assert E.mean_curve(recs, "test_acc") == ([2, 3], [pytest.approx(0.4), pytest.approx(0.8)])


def test_seeds_per_noise_adds_seeds_to_one_noise_rate():
    grid = _tiny_grid(seeds=[0, 1], seeds_per_noise={"0.4": [0, 1, 2]})
    seeds = {}
    for rate, config in grid.runs():
        seeds.setdefault((rate, config.method, json.dumps(config.hparams)), []).append(config.seed)
    assert {k: v for k, v in seeds.items() if k[0] == 0.4} == {k: [0, 1, 2] for k in seeds if k[0] == 0.4}
    assert all(v == [0, 1] for k, v in seeds.items() if k[0] == 0.0)
    with pytest.raises(ValueError, match="seeds_per_noise"):
        _tiny_grid(seeds_per_noise={"0.3": [0]}).validate()
