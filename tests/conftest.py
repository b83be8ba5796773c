import os

import pytest
import torch

os.environ.setdefault("SAMLIB_MODE", "quick")
os.environ.setdefault("MPLBACKEND", "Agg")

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA is not available")])]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
