"""Rebuild data/fashion_mnist_subset.npz, the stratified Fashion-MNIST subset bundled with the course.

    python data/build_fashion_mnist.py [--source /usr/share/datasets/fashion-mnist]

Reads the four official idx files (checked against their sha256 by samlib.data), keeps the first
1000 training and 200 test images of each class in a seeded random order (10k / 2k in all), and
writes them as uint8 arrays in one compressed .npz. The output is byte-for-byte reproducible; its
sha256 is printed and must equal samlib.data.BUNDLED_SHA256 (update that constant if you change
the recipe).
"""
import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

from samlib.data import BUNDLED_NAME, BUNDLED_SHA256, DEBIAN_FASHION_MNIST, load_fashion_mnist

PER_CLASS = {"train": 1000, "test": 200}
SEED = 0


def stratified(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(len(labels))
    keep = np.concatenate([order[labels[order] == c][:per_class] for c in range(10)])
    return np.sort(keep)


def build(source: Path) -> bytes:
    arrays = {}
    for split, per_class in PER_CLASS.items():
        images, labels = load_fashion_mnist(split, root=source)
        idx = stratified(labels.numpy(), per_class, SEED)
        arrays[f"{split}_images"] = images[idx, 0].numpy()
        arrays[f"{split}_labels"] = labels[idx].numpy().astype(np.uint8)
        arrays[f"{split}_source_index"] = idx.astype(np.int32)
    # a zip with fixed timestamps, so the bytes (and the checksum) are reproducible
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            payload = io.BytesIO()
            np.save(payload, arr, allow_pickle=False)
            zf.writestr(info, payload.getvalue(), compresslevel=9)
    return buf.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEBIAN_FASHION_MNIST,
                        help="folder with the official idx(.gz) files")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / BUNDLED_NAME)
    args = parser.parse_args()
    data = build(args.source)
    args.out.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    print(f"wrote {args.out} ({len(data) / 1e6:.2f} MB), sha256 {digest}")
    if digest != BUNDLED_SHA256:
        print("note: this differs from samlib.data.BUNDLED_SHA256; update the constant if the change is intended")


if __name__ == "__main__":
    main()
