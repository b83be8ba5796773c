"""samlib.data: bundled data, loader order and errors, CIFAR format, label noise, scenes, batching."""
import gzip
import hashlib
import tarfile

import numpy as np
import pytest
import torch

from samlib import data as D

from synthetic_cifar import write_cifar_archive


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(D.urllib.request, "urlopen", refuse)
    monkeypatch.setattr(D.urllib.request, "urlretrieve", refuse)


def test_bundled_subset_is_stratified_uint8(no_network):
    x, y = D.load_fashion_mnist("train", subset=True)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.equal(y.bincount(), torch.full((10,), 1000))
    xt, yt = D.load_fashion_mnist("test", subset=True)
    assert xt.shape == (2000, 1, 28, 28) and torch.equal(yt.bincount(), torch.full((10,), 200))
    assert hashlib.sha256(D.bundled_path().read_bytes()).hexdigest() == D.BUNDLED_SHA256


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


@pytest.fixture
def fake_full_copy(tmp_path, monkeypatch):
    """A tiny full-format Fashion-MNIST copy, with the loader's checksums pointed at it."""
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 30), ("test", 20)):
        (img_name, _), (lab_name, _) = D.FASHION_FILES[split]
        images = _idx_bytes(rng.integers(0, 256, (n, 28, 28)))
        labels = _idx_bytes(rng.integers(0, 10, (n,)))
        (tmp_path / f"{img_name}.gz").write_bytes(gzip.compress(images))
        (tmp_path / lab_name).write_bytes(labels)  # uncompressed works too
        files[split] = ((img_name, hashlib.sha256(images).hexdigest()), (lab_name, hashlib.sha256(labels).hexdigest()))
    monkeypatch.setattr(D, "FASHION_FILES", files)
    return tmp_path


def test_full_copy_in_root_takes_precedence(fake_full_copy, no_network, monkeypatch, tmp_path_factory):
    monkeypatch.setenv("SAMLIB_DATA", str(tmp_path_factory.mktemp("elsewhere")))
    x, y = D.load_fashion_mnist("train", root=fake_full_copy)
    assert x.shape == (30, 1, 28, 28) and y.shape == (30,)


def test_samlib_data_env_is_used(fake_full_copy, no_network, monkeypatch):
    monkeypatch.setenv("SAMLIB_DATA", str(fake_full_copy))
    x, _ = D.load_fashion_mnist("test")
    assert x.shape == (20, 1, 28, 28)


def test_falls_back_to_bundled_subset(no_network, monkeypatch, tmp_path):
    monkeypatch.setenv("SAMLIB_DATA", str(tmp_path))
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    x, _ = D.load_fashion_mnist("test")
    assert x.shape == (2000, 1, 28, 28)


def test_corrupt_full_copy_names_the_file(fake_full_copy):
    (fake_full_copy / "train-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01garbage")
    with pytest.raises(D.DataError, match="corrupt.*train-labels"):
        D.load_fashion_mnist("train", root=fake_full_copy)


def test_missing_root_says_where_it_looked_and_how_to_fix(tmp_path):
    with pytest.raises(D.DataError, match=rf"{tmp_path}.*download=True"):
        D.load_fashion_mnist("train", root=tmp_path)


def test_corrupt_bundled_subset_is_detected(tmp_path, monkeypatch):
    bad = tmp_path / "subset.npz"
    raw = bytearray(D.bundled_path().read_bytes())
    raw[1000] ^= 0xFF
    bad.write_bytes(bytes(raw))
    monkeypatch.setenv("SAMLIB_BUNDLED_DATA", str(bad))
    with pytest.raises(D.DataError, match="corrupt"):
        D.load_fashion_mnist("train", subset=True)


def test_download_needs_a_destination(monkeypatch):
    monkeypatch.delenv("SAMLIB_DATA", raising=False)
    with pytest.raises(ValueError, match="root"):
        D.load_fashion_mnist("train", download=True)


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        D.load_fashion_mnist("validation")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_python_archive(tmp_path, name, no_network):
    parts = write_cifar_archive(tmp_path, name)
    spec = D.CIFAR[name]
    x, y = D.load_cifar(name, "train", root=tmp_path, verify=False)
    assert x.shape == (4 * len(spec["train"]), 3, 32, 32) and x.dtype == torch.uint8
    first = parts[spec["train"][0]]
    assert torch.equal(x[0], torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)))
    assert y[:4].tolist() == first[spec["label_key"]]
    xt, _ = D.load_cifar(name, "test", root=tmp_path, verify=False)
    assert xt.shape == (4, 3, 32, 32)


def test_cifar_checksum_and_missing_errors(tmp_path):
    write_cifar_archive(tmp_path)
    with pytest.raises(D.DataError, match="md5"):
        D.load_cifar("cifar10", root=tmp_path)
    with pytest.raises(D.DataError, match="download=True"):
        D.load_cifar("cifar10", root=tmp_path / "nothing")
    with pytest.raises(ValueError, match="cifar10"):
        D.load_cifar("svhn", root=tmp_path)


def test_cifar_extracted_folder(tmp_path):
    write_cifar_archive(tmp_path)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    x, _ = D.load_cifar("cifar10", "test", root=tmp_path / "x")
    assert x.shape == (4, 3, 32, 32)


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.8])
def test_label_noise_exact_rate_and_always_wrong(rate, kind):
    labels = torch.arange(1000) % 10
    noisy, flipped = D.add_label_noise(labels, rate, 10, seed=3, kind=kind)
    assert int(flipped.sum()) == round(rate * 1000)
    assert torch.equal(noisy != labels, flipped)
    if kind == "pairflip":
        assert torch.equal(noisy[flipped], (labels[flipped] + 1) % 10)
    again, _ = D.add_label_noise(labels, rate, 10, seed=3, kind=kind)
    assert torch.equal(noisy, again)


def test_symmetric_noise_spreads_over_other_classes():
    labels = torch.zeros(20000, dtype=torch.long)
    noisy, _ = D.add_label_noise(labels, 0.9, 10, seed=0)
    counts = noisy.bincount(minlength=10)[1:].float()
    assert counts.min() > 0.9 * counts.mean()


def test_label_noise_errors():
    with pytest.raises(ValueError, match="rate"):
        D.add_label_noise(torch.zeros(5, dtype=torch.long), 1.0, 10, 0)
    with pytest.raises(ValueError, match="num_classes"):
        D.add_label_noise(torch.tensor([0, 12]), 0.1, 10, 0)
    with pytest.raises(ValueError, match="kind"):
        D.add_label_noise(torch.tensor([0, 1]), 0.1, 10, 0, kind="asym")


def test_fashion_scenes_are_deterministic_and_consistent():
    x, m, clean = D.fashion_scenes(64, seed=1, mask_noise=0.3, return_clean=True)
    assert x.shape == (64, 1, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert m.shape == (64, 64, 64) and m.dtype == torch.int64 and 0 <= m.min() and m.max() <= 10
    x2, m2 = D.fashion_scenes(64, seed=1, mask_noise=0.3)
    assert torch.equal(x, x2) and torch.equal(m, m2)
    assert not torch.equal(D.fashion_scenes(64, seed=2)[0], x)
    assert torch.equal(m > 0, clean > 0)                  # noise relabels objects, never moves them
    assert (x[:, 0][clean > 0] > 0.1).all()               # mask pixels are garment pixels
    assert 0 < (m != clean).float().mean()                 # some objects were relabelled
    objects = (clean > 0).float().mean()
    assert objects > 0.1                                   # garments cover a real part of the canvas


def test_default_garment_scale_follows_the_canvas():
    source = D.load_fashion_mnist("train", subset=True)
    for size, scale in ((64, (0.9, 1.6)), (32, (0.45, 0.8))):
        assert torch.equal(D.fashion_scenes(8, seed=0, size=size, source=source)[1],
                           D.fashion_scenes(8, seed=0, size=size, scale=scale, source=source)[1])
    small = (D.fashion_scenes(64, seed=0, size=32, source=source)[1] > 0).float().mean()
    large = (D.fashion_scenes(64, seed=0, size=64, source=source)[1] > 0).float().mean()
    assert abs(float(small - large)) < 0.05  # the same fraction of the canvas at either size


def test_mask_noise_zero_gives_clean_masks():
    _, m, clean = D.fashion_scenes(16, seed=0, return_clean=True)
    assert torch.equal(m, clean)


@pytest.fixture(scope="module")
def garments():
    return D.load_fashion_mnist("train", subset=True)


def test_superclass_map_groups_the_named_classes():
    groups = {"tops": {"T-shirt/top", "Pullover", "Coat", "Shirt"}, "trouser": {"Trouser"}, "dress": {"Dress"},
              "footwear": {"Sandal", "Sneaker", "Ankle boot"}, "bag": {"Bag"}}
    assert D.SCENE_SUPERCLASSES == tuple(groups)
    for c, name in enumerate(D.FASHION_CLASSES):
        assert name in groups[D.SCENE_SUPERCLASSES[D.SUPERCLASS_OF[c]]], name
    assert D.scene_class_names("superclasses") == ("background", "tops", "trouser", "dress", "footwear", "bag")
    assert D.scene_class_names() == ("background", *D.FASHION_CLASSES)
    with pytest.raises(ValueError, match="superclasses"):
        D.scene_class_names("coarse")
    with pytest.raises(ValueError, match="labels"):
        D.fashion_scenes(2, seed=0, labels="coarse")


def test_superclass_scenes_relabel_the_same_scenes(garments):
    x10, m10, c10 = D.fashion_scenes(96, seed=4, size=32, source=garments, mask_noise=0.4, return_clean=True)
    x5, m5, c5 = D.fashion_scenes(96, seed=4, size=32, source=garments, mask_noise=0.4, return_clean=True,
                                  labels="superclasses")
    assert torch.equal(x10, x5)                                   # the same images
    to_super = torch.tensor([0] + [s + 1 for s in D.SUPERCLASS_OF])
    assert torch.equal(c5, to_super[c10])                         # the clean masks through the class map
    assert torch.equal(m5 != c5, m10 != c10)                      # noise picks the same objects
    assert set(c5.unique().tolist()) == set(range(6))             # every super-class occurs


def test_superclass_scenes_are_deterministic(garments):
    first = D.fashion_scenes(32, seed=9, size=32, source=garments, mask_noise=0.4, return_clean=True, labels="superclasses")
    again = D.fashion_scenes(32, seed=9, size=32, source=garments, mask_noise=0.4, return_clean=True, labels="superclasses")
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other = D.fashion_scenes(32, seed=10, size=32, source=garments, mask_noise=0.4, labels="superclasses")
    assert not torch.equal(other[1], first[1])


def test_balance_gives_every_super_class_the_same_count(garments):
    images, classes = D._balanced_garments(*garments, D.SUPERCLASS_OF)
    per_super = torch.bincount(torch.tensor(D.SUPERCLASS_OF)[classes], minlength=5)
    assert per_super.tolist() == [1000] * 5                        # the rarest super-class has 1000 garments
    per_class = torch.bincount(classes, minlength=10)
    assert per_class[[0, 2, 4, 6]].tolist() == [250] * 4           # the four kinds of tops share equally
    assert sorted(per_class[[5, 7, 9]].tolist()) == [333, 333, 334]  # and the three kinds of footwear
    first_coats = torch.nonzero(garments[1] == 4).flatten()[:250]  # the first coats in source order
    assert torch.equal(images[classes == 4], garments[0][first_coats])
    _, m_bal = D.fashion_scenes(300, seed=5, size=32, source=garments, labels="superclasses", balance=True)
    _, m_raw = D.fashion_scenes(300, seed=5, size=32, source=garments, labels="superclasses")
    tops_share = [float((m == 1).sum() / (m > 0).sum()) for m in (m_bal, m_raw)]
    assert tops_share[0] < 0.3 < 0.4 < tops_share[1]               # tops: about 1/5 of garment pixels, not 2/5
    classes_10 = D.fashion_scenes(64, seed=5, size=32, source=garments, return_clean=True)
    assert all(torch.equal(a, b) for a, b in zip(classes_10, D.fashion_scenes(64, seed=5, size=32, source=garments,
                                                                                return_clean=True, balance=True)))


@pytest.mark.parametrize("labels, k", [("classes", 10), ("superclasses", 5)])
def test_mask_noise_never_touches_the_background(garments, labels, k):
    _, noisy, clean = D.fashion_scenes(400, seed=2, size=32, source=garments, mask_noise=0.4, return_clean=True,
                                       labels=labels)
    assert torch.equal(noisy == 0, clean == 0)                    # background stays background, both ways
    assert 0 <= int(noisy.min()) and int(noisy.max()) <= k
    changed = noisy != clean
    fraction = float(changed.sum() / (clean > 0).sum())
    assert 0.3 < fraction < 0.5                                   # about 40% of the (visible) garment pixels
    shift = (noisy[changed] - clean[changed]) % k                 # which of the other k - 1 labels it became
    counts = torch.bincount(shift, minlength=k).float()
    assert counts[0] == 0 and counts[1:].min() > 0.5 * counts[1:].mean()


def test_batches_cover_each_example_once_and_are_reproducible():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    y = torch.arange(10)
    b = D.Batches(x, y, batch_size=4, seed=5)
    epoch1 = [yb for _, yb in b]
    assert sorted(torch.cat(epoch1).tolist()) == list(range(10)) and len(epoch1) == 3
    epoch2 = torch.cat([yb for _, yb in b])
    assert not torch.equal(torch.cat(epoch1), epoch2)
    fresh = D.Batches(x, y, batch_size=4, seed=5)
    assert torch.equal(torch.cat([yb for _, yb in fresh]), torch.cat(epoch1))
    xb, yb = next(iter(D.Batches(x, y, batch_size=10, shuffle=False)))
    assert xb.dtype == torch.float32 and torch.allclose(xb.flatten(), y.float() / 255)
    assert len(D.Batches(x, y, 4, drop_last=True)) == 2


def test_batches_on_device(device):
    x, y = torch.zeros(6, 1, 2, 2), torch.zeros(6, dtype=torch.long)
    xb, yb = next(iter(D.Batches(x, y, 3, device=device)))
    assert xb.device.type == device.type and yb.device.type == device.type


def test_split_validation():
    tr, va = D.split_validation(100, 0.1, seed=0)
    assert len(va) == 10 and len(tr) == 90 and set(tr.tolist()).isdisjoint(va.tolist())
    with pytest.raises(ValueError, match="fraction"):
        D.split_validation(100, 1.5, 0)
