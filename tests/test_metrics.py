"""Classification metrics and training-loop logging of samlib.train, checked against independent computations."""
import math

import pytest
import torch
import torch.nn.functional as F

from samlib.data import load_fashion_mnist
from samlib.distributed import sam_step
from samlib.models import build_model
from samlib.optim import SAM, InfoSAM
from samlib.train import (TAIL_EVALUATIONS, TrainConfig, _sam_step_with_ascent, _trajectory_summary, calibration_error,
                          classification_memorization, decode_predictions, encode_predictions, evaluate, train)


def _ece_by_loop(conf, correct, bins):
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i in range(len(conf)) if (lo < conf[i] <= hi) or (b == 0 and conf[i] == 0)]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            avg = sum(conf[i] for i in members) / len(members)
            total += len(members) / len(conf) * abs(acc - avg)
    return total


def test_calibration_error_matches_a_loop_and_known_cases():
    gen = torch.Generator().manual_seed(0)
    conf = torch.rand(500, generator=gen)
    correct = torch.rand(500, generator=gen) < conf ** 2          # over-confident on purpose
    for bins in (1, 10, 15):
        assert calibration_error(conf, correct, bins) == pytest.approx(
            _ece_by_loop(conf.tolist(), correct.float().tolist(), bins), abs=1e-12)
    assert calibration_error(torch.full((10,), 0.8), torch.tensor([1, 0] * 5)) == pytest.approx(0.3)
    assert calibration_error(torch.ones(7), torch.ones(7, dtype=torch.bool)) == 0.0
    edges = torch.tensor([0.2, 0.4])                             # right-closed bins: 0.2 is in (0.1, 0.2]
    assert calibration_error(edges, torch.tensor([True, False]), bins=5) == pytest.approx((0.8 + 0.4) / 2)
    with pytest.raises(ValueError, match="bins"):
        calibration_error(conf, correct, bins=0)


def test_evaluate_reports_nll_ece_and_predictions():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (300,))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    s = evaluate(model, x, y, batch_size=64, predictions=True)
    with torch.no_grad():
        logits = model(x.float().div(255))
    probs = logits.softmax(1)
    assert s["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert torch.equal(s["predictions"], logits.argmax(1))
    assert s["ece"] == pytest.approx(_ece_by_loop(probs.amax(1).tolist(), (logits.argmax(1) == y).float().tolist(), 15),
                                     abs=1e-6)


def test_predictions_round_trip():
    pred = torch.tensor([3, 0, 9, 9, 1])
    assert encode_predictions(pred, 10) == "30991"
    assert torch.equal(decode_predictions(encode_predictions(pred, 10)), pred)
    wide = torch.tensor([42, 0, 99, 7])
    assert torch.equal(decode_predictions(encode_predictions(wide, 100)), wide)


def _noisy_labels(n, k, rate, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, k, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < rate
    other = (clean + (torch.randint(1, k, (n,), generator=gen) if kind == "symmetric" else 1)) % k
    return clean, torch.where(flip, other, clean), gen


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
def test_memorization_chance_level_matches_a_network_that_ignores_the_flips(kind):
    k, n = 10, 40_000
    clean, noisy, gen = _noisy_labels(n, k, 0.4, kind, seed=1)
    # a "network" that never looks at the training labels: right with prob. 0.7, else class c+1 (prob. 0.2)
    # or a uniform other class (prob. 0.1); its held-out behaviour is the same rule on fresh images
    def ignore_labels(c):
        u = torch.rand(len(c), generator=gen)
        uniform = (c + torch.randint(1, k, c.shape, generator=gen)) % k
        return torch.where(u < 0.7, c, torch.where(u < 0.9, (c + 1) % k, uniform))
    pred = ignore_labels(clean)
    held_out = torch.randint(0, k, (20_000,), generator=gen)
    m = classification_memorization(pred, noisy, clean, k, reference=(held_out, ignore_labels(held_out)))
    # independent expectation of the chance level: P(pred = noisy | flipped)
    expected = (0.2 + 0.1 / 9) / 9 + 8 / 9 * 0.1 / 9 if kind == "symmetric" else 0.2 + 0.1 / 9
    assert m["memorized"] == pytest.approx(expected, abs=0.01)
    assert m["memorized_chance"] == pytest.approx(expected, abs=0.01)
    assert abs(m["memorized_excess"]) < 0.012
    # without a held-out set the unflipped training examples serve as the reference: same rule, same answer
    m2 = classification_memorization(pred, noisy, clean, k)
    assert m2["memorized_chance"] == pytest.approx(expected, abs=0.01)
    # a network that memorized every flip: excess = 1 - chance
    memorizer = classification_memorization(noisy, noisy, clean, k, reference=(held_out, ignore_labels(held_out)))
    assert memorizer["memorized"] == 1.0
    assert memorizer["memorized_excess"] == pytest.approx(1 - expected, abs=0.01)
    flipped = noisy != clean
    assert m["train_clean_acc"] == pytest.approx(float((pred == clean).float().mean()))
    assert m["memorized"] == pytest.approx(float((pred[flipped] == noisy[flipped]).float().mean()))


def test_memorization_without_flips_has_no_memorized_entry():
    y = torch.tensor([0, 1, 2, 3])
    m = classification_memorization(y, y, y, 4)
    assert m == {"train_clean_acc": 1.0, "train_noisy_acc": 1.0}


def test_trajectory_summary_on_a_known_history():
    history = [{"epoch": 1, "val_acc": 0.5, "test_acc": 0.6}, {"epoch": 2, "train_loss": 1.0},
               {"epoch": 3, "val_acc": 0.7, "test_acc": 0.65}, {"epoch": 4, "val_acc": 0.6, "test_acc": 0.7},
               {"epoch": 5, "val_acc": 0.7, "test_acc": 0.68}]
    s = _trajectory_summary(history)
    assert TAIL_EVALUATIONS == 3 and s["val_acc_tail"] == pytest.approx((0.7 + 0.6 + 0.7) / 3)
    assert (s["test_acc_best"], s["epoch_test_best"]) == (0.7, 4)
    assert (s["test_acc_val_best"], s["epoch_val_best"]) == (0.65, 3)   # first of the tied best val epochs


def _model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = build_model("small_cnn", 1, 10, width=4)
    x, y = load_fashion_mnist("train", subset=True)
    return model, x[:64].float().div(255), y[:64]


@pytest.mark.parametrize("method", [SAM, InfoSAM])
def test_logged_sam_step_takes_the_same_step_and_measures_the_ascent(method):
    (m1, x, y), (m2, _, _) = _model_and_batch(), _model_and_batch()
    o1 = method(m1.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    o2 = method(m2.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    for step in range(3):
        ascent = torch.zeros(4, dtype=torch.float64)
        xb, yb = x[16 * step:16 * step + 32], y[16 * step:16 * step + 32]
        # independent measurement at the same w: SAM's eps = rho g/||g||; InfoSAM's from a copy of its state
        w = [p.detach().clone() for p in m1.parameters()]
        m1.train()
        g = torch.autograd.grad(F.cross_entropy(m1(xb), yb), list(m1.parameters()))
        sam_step(m2, o2, F.cross_entropy, xb, yb)
        _sam_step_with_ascent(m1, o1, F.cross_entropy, xb, yb, ascent)
        for p, q in zip(m1.parameters(), m2.parameters()):
            assert torch.equal(p, q)                                 # bit for bit the same step
        if method is SAM:
            gnorm = math.sqrt(sum(float(t.square().sum()) for t in g))
            assert float(ascent[1]) == pytest.approx(0.05 * gnorm, rel=1e-5)        # g . eps = rho ||g||
            flat = torch.cat([t.flatten() for t in g]).double()
            assert float(ascent[2]) == pytest.approx(float(flat.square().sum() ** 2 / (len(flat) * flat.pow(4).sum())),
                                                     rel=1e-5)
            eps = [0.05 * t / gnorm for t in g]
            probe = build_model("small_cnn", 1, 10, width=4)
            probe.load_state_dict(m1.state_dict())
            with torch.no_grad():
                for p, w0, e in zip(probe.parameters(), w, eps):
                    p.copy_(w0 + e)
            # BatchNorm: the logged ascent compares both losses in train mode on the same batch
            probe.train()
            perturbed = float(F.cross_entropy(probe(xb), yb))
            for p, w0 in zip(probe.parameters(), w):
                p.data.copy_(w0)
            base = float(F.cross_entropy(probe(xb), yb))
            assert float(ascent[0]) == pytest.approx(perturbed - base, abs=1e-5)
        assert float(ascent[3]) == 1.0 and 0 < float(ascent[2]) <= 1


def test_train_logs_ascent_predictions_and_summaries():
    x, y = load_fashion_mnist("train", subset=True)
    xt, yt = load_fashion_mnist("test", subset=True)
    noisy = torch.where(torch.arange(256) % 3 == 0, (y[:256] + 1) % 10, y[:256])
    common = dict(model="small_cnn", model_kwargs={"width": 4}, epochs=2, batch_size=64, device="cpu")
    sam = train(TrainConfig(method="SAM", hparams={"rho": 0.05}, **common), (x[:256], noisy, y[:256]),
                (xt[:100], yt[:100]), (x[300:364], y[300:364]), progress=False)
    sgd = train(TrainConfig(**common), (x[:256], noisy, y[:256]), (xt[:100], yt[:100]), progress=False)
    for row in sam["history"]:
        assert 0 < row["ascent_linear"] and 0 < row["eps_dim"] <= 1 and math.isfinite(row["ascent"])
        assert {"test_ece", "val_ece", "memorized_chance", "memorized_excess"} <= set(row)
    assert "ascent" not in sgd["final"] and "val_acc_tail" not in sgd["final"] and "test_acc_best" in sgd["final"]
    pred = decode_predictions(sam["test_predictions"])
    model = sam["model"].eval()
    with torch.no_grad():
        assert torch.equal(pred, model(xt[:100].float().div(255)).argmax(1))
    assert float((pred == yt[:100]).float().mean()) == pytest.approx(sam["final"]["test_acc"])
    assert sam["final"]["val_acc_tail"] == pytest.approx(sum(h["val_acc"] for h in sam["history"]) / 2)


def test_learning_rate_as_a_hyperparameter():
    c = TrainConfig(method="SGD", hparams={"lr": 0.2}, lr=0.05).validate()
    assert c.lr == 0.2
    from samlib.train import make_optimizer
    model = torch.nn.Linear(3, 2)
    assert make_optimizer(c, model.parameters()).param_groups[0]["lr"] == 0.2
    sam = TrainConfig(method="SAM", hparams={"rho": 0.1, "lr": 0.01}).validate()
    opt = make_optimizer(sam, model.parameters())
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["rho"] == 0.1
    c.lr = 0.3
    with pytest.raises(ValueError, match="disagrees"):
        c.validate()
    with pytest.raises(ValueError, match="SGD takes no hparams other than lr"):
        TrainConfig(method="SGD", hparams={"rho": 0.1}).validate()
