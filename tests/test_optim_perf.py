"""Launch and memory budgets of samlib.optim, counted rather than timed (timings: ``python -m samlib.bench``).

Dispatched aten operations stand in for GPU kernel launches (a multi-tensor ``_foreach`` op counts
once); ``detach`` and friends would count too, so the count is an upper bound.
"""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from samlib.models import ResNet18
from samlib.optim import OPTIMIZERS, InverseVarianceSAM


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _resnet18_params(width):
    torch.manual_seed(0)
    return [torch.nn.Parameter(p.detach().clone()) for p in ResNet18(width=width).parameters()]


def _first_step_ops(cls, width, **kwargs):
    params = _resnet18_params(width)
    opt = cls(params, torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4, **kwargs)
    for _ in range(3):                          # the last step is counted (chunks and state exist by then)
        for p in params:
            p.grad = torch.randn_like(p)
        with CountOps() as counted:
            opt.first_step()
        opt.second_step(zero_grad=True)
    return counted.ops


@pytest.mark.parametrize("width", [64, 8])      # ResNet-18 itself (large tensors), and a narrow one (small tensors)
def test_sam_first_step_dispatches_at_most_12_ops_on_resnet18(width):
    ops = _first_step_ops(OPTIMIZERS["SAM"], width)
    assert len(_resnet18_params(width)) == 62
    assert sum(ops.values()) <= 12, dict(ops)
    assert not any(name.startswith(("clone", "copy_", "add_")) and not name.startswith("_foreach") for name in ops)


@pytest.mark.parametrize("name", [*OPTIMIZERS, "InverseVarianceSAM"])
def test_every_variant_dispatches_a_count_independent_of_the_number_of_tensors(name):
    """The flat layout: a variant's first step costs the same number of operations for 62 tensors as for 1."""
    cls = InverseVarianceSAM if name == "InverseVarianceSAM" else OPTIMIZERS[name]
    many = sum(_first_step_ops(cls, 8).values())
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(1000))
    opt = cls([p], torch.optim.SGD, lr=0.05)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        with CountOps() as one:
            opt.first_step()
        opt.second_step(zero_grad=True)
    assert many == sum(one.ops.values()) and many <= 25, (many, dict(one.ops))


def _has_cpp_compiler():
    import shutil
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


@pytest.mark.skipif(not _has_cpp_compiler(), reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.parametrize("gain_from", ["current", "previous"])
def test_compiled_infosam_follows_the_eager_trajectory(gain_from):
    """compile=True fuses the flat arithmetic (the InfoSAM timing target in samlib.bench); same maths."""
    torch.manual_seed(0)
    w = [torch.randn(37, 5, dtype=torch.float64), torch.randn(11, dtype=torch.float64)]
    grads = [[torch.randn_like(x) for x in w] for _ in range(5)]
    finals, stats = [], []
    for compiled in (False, True):
        params = [torch.nn.Parameter(x.clone()) for x in w]
        opt = OPTIMIZERS["InfoSAM"](params, torch.optim.SGD, lr=0.1, momentum=0.9, rho=0.2, beta=0.7,
                                    gain_from=gain_from, compile=compiled)
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = g.clone()
            opt.first_step()
            for p, g in zip(params, gs):
                p.grad = 2 * g
            opt.second_step(zero_grad=True)
        finals.append(torch.cat([p.detach().flatten() for p in params]))
        stats.append(torch.cat([opt.state[p]["v"].flatten() for p in params]))
    torch.testing.assert_close(finals[1], finals[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats[1], stats[0], rtol=1e-12, atol=1e-12)
