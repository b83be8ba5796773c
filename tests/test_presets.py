"""The literature CIFAR presets, smoke-tested for one step each on tiny synthetic CIFAR-format archives."""
import pytest
import torch

from samlib import experiments as E
from samlib.data import augment_batch

from synthetic_cifar import write_cifar_archive


@pytest.mark.parametrize("name", sorted(E.PRESETS))
def test_preset_runs_a_few_steps(tmp_path, name):
    dataset, model = E.PRESETS[name]
    write_cifar_archive(tmp_path, dataset, per_part=8)
    grid = E.cifar_preset(dataset, model, root=str(tmp_path))
    assert grid.train["epochs"] == 200 and grid.train["batch_size"] == 128 and grid.train["augment"] == "flip-crop-cutout"
    assert grid.overrides["SAM"]["weight_decay"] == 1e-3 and "SGD" not in grid.overrides
    grid.data.verify = False                    # a synthetic archive, not the official one
    grid.data.val_fraction = 0.2
    grid.seeds = [0]
    grid.train.update(epochs=1, batch_size=4, steps_per_epoch=1, device="cpu")
    assert set(grid.methods) == {"SGD", "SAM", "ASAM", "FisherSAM", "VaSSO", "FriendlySAM", "InfoSAM"}
    keep = ("SGD", "ASAM", "InfoSAM") if model == "resnet18" else ("SGD", "InfoSAM")   # CPU budget: a sample
    grid.methods = {m: grid.methods[m] for m in keep}
    summary = E.run_grid(grid, tmp_path / "out", progress=False, log=lambda *a: None)
    records = E.load_records(tmp_path / "out")
    assert len(records) == len(grid.methods)
    for r in records:
        assert r["config"]["weight_decay"] == (5e-4 if r["config"]["method"] == "SGD" else 1e-3)
        assert len(r["history"]) == 1 and 0 <= r["final"]["test_acc"] <= 1
    assert summary["rows"]


def test_preset_cli_validates_names(tmp_path):
    with pytest.raises(SystemExit):
        E.main(["preset", "cifar10-vgg", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="Unknown preset"):
        E.cifar_preset("svhn", "resnet18")


def test_augmentation_keeps_shape_and_content():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    assert torch.equal(augment_batch(x, flip=False, crop_pad=0, cutout=0), x)
    flipped = augment_batch(x, flip=True, crop_pad=0, cutout=0)
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    cut = augment_batch(x, flip=False, crop_pad=0, cutout=16)
    zeros = (cut == 0).flatten(1).float().mean(1)
    assert (zeros > 0).all() and (zeros <= 17 * 17 / 1024 + 1e-6).all()
    cropped = augment_batch(x, flip=False, crop_pad=4, cutout=0)
    assert cropped.shape == x.shape
