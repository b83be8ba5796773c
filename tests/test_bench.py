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


def test_optimizer_memory_accounts_for_buffers_and_statistics():
    import torch
    p = torch.nn.Parameter(torch.zeros(1000))
    for name, stats in (("SAM", 0), ("InfoSAM", 2)):
        opt = OPTIMIZERS[name]([p], torch.optim.SGD, lr=0.1, momentum=0.9)
        p.grad = torch.ones(1000)
        opt.first_step()
        opt.second_step()
        mem = bench.optimizer_memory(opt)
        assert mem["params"] == 4000 and mem["base_state"] == 4000          # one momentum buffer
        assert mem["running_stats"] == stats * 4000                          # InfoSAM: m and v
        assert mem["working_buffers"] >= 3 * 4000                            # g, eps, w + eps
