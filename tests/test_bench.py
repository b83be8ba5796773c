"""The benchmark runs end to end (a smoke test: speed is reported by the benchmark, never asserted here)."""
from samlib import bench
from samlib.optim import OPTIMIZERS


def test_bench_smoke(capsys):
    tables, e2e = bench.main(["--repeats", "1", "--widths", "4", "--batch", "8"])
    out = capsys.readouterr().out
    assert set(tables[4]) == {bench.REFERENCE, *OPTIMIZERS}
    assert set(e2e) == {"SGD", *OPTIMIZERS}
    assert all(total > 0 for total, _ in tables[4].values())
    assert "x SGD" in out and bench.REFERENCE in out


def test_loop_reference_is_sam():
    """The benchmark's reference computes the same step as samlib's SAM."""
    import torch
    torch.manual_seed(0)
    w = [torch.randn(3, 4), torch.randn(5)]
    g = [torch.randn(3, 4), torch.randn(5)]
    runs = []
    for cls in (bench.LoopSAM, OPTIMIZERS["SAM"]):
        params = [torch.nn.Parameter(t.clone()) for t in w]
        opt = cls(params, torch.optim.SGD, rho=0.1, lr=0.1)
        for p, gg in zip(params, g):
            p.grad = gg.clone()
        opt.first_step()
        runs.append([p.detach().clone() for p in params])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b)
