"""samlib.train and samlib.experiments: one loop for every method, records, resumable grids."""
import json

import pytest
import torch

from samlib import experiments as E
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
    saved = json.loads((tmp_path / "r.json").read_text())
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
    real_train = E.train

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # an interruption mid-grid
        return real_train(*args, **kwargs)

    monkeypatch.setattr(E, "train", flaky)
    with pytest.raises(KeyboardInterrupt):
        E.run_grid(grid, tmp_path, progress=False, log=lambda *_: None)
    assert len(list((tmp_path / "records").glob("*.json"))) == 3
    assert not list((tmp_path / "records").glob("*.tmp"))
    summary = E.run_grid(grid, tmp_path, progress=False, log=lambda *_: None)
    assert len(calls) == 4 + 9  # the 3 finished runs were not redone
    assert len(list((tmp_path / "records").glob("*.json"))) == 12

    monkeypatch.setattr(E, "train", lambda *a, **k: pytest.fail("a finished run was re-run"))
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
    assert "±" in (tmp_path / "summary.md").read_text()
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
    assert E._parse_method("InfoSAM:rho=0.05,0.1;beta=0.9") == ("InfoSAM", {"rho": [0.05, 0.1], "beta": [0.9]})
    assert E._parse_method("SGD") == ("SGD", {})


def test_readme_demo_runs_in_quick_mode(tmp_path, capsys):
    summary = E.main(["demo", "--out", str(tmp_path / "demo")])
    assert {r["method"] for r in summary["rows"]} == {"SGD", "SAM", "InfoSAM"}
    assert (tmp_path / "demo" / "curves.png").exists()
    assert "± " in capsys.readouterr().out
