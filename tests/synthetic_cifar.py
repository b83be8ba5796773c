"""A tiny archive in the official CIFAR "python version" format, for tests (no download)."""
import io
import pickle
import tarfile

import numpy as np

from samlib.data import CIFAR


def write_cifar_archive(root, name="cifar10", per_part=4, seed=0) -> dict:
    """Write ``root/<official archive name>`` with ``per_part`` random images per batch file; return the batches."""
    spec = CIFAR[name]
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    parts = {}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for part in spec["train"] + spec["test"]:
            batch = {b"data": rng.integers(0, 256, (per_part, 3072)).astype(np.uint8),
                     spec["label_key"]: rng.integers(0, spec["classes"], per_part).tolist()}
            payload = pickle.dumps(batch)
            info = tarfile.TarInfo(f"{spec['folder']}/{part}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
            parts[part] = batch
    (root / spec["archive"]).write_bytes(buf.getvalue())
    return parts
