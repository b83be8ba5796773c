import pytest
import torch

import matplotlib

matplotlib.use("Agg")  # unit tests draw headless; notebook kernels keep their inline backend

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA is not available")])]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
