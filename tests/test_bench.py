"""The benchmark runs end to end (a smoke test: speed is reported by the benchmark, never asserted here)."""
from samlib import bench
from samlib.optim import OPTIMIZERS


def test_bench_smoke(capsys):
    tables, e2e, memory = bench.main(["--repeats", "1", "--widths", "4", "--batch", "8"])
    out = capsys.readouterr().out
    assert set(tables[4]) == {bench.REFERENCE, *OPTIMIZERS}
    assert set(e2e) == {"SGD", *OPTIMIZERS}
    assert all(total > 0 for total, _ in tables[4].values())
    assert "x SGD" in out and bench.REFERENCE in out and "Persistent memory" in out
    assert set(memory[4]) == {bench.REFERENCE, *OPTIMIZERS}


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
    """The issue's memory targets: SAM holds at most 1x the parameters between steps, InfoSAM at most 3x
    (two of them its statistics m and v), the loop reference exactly 1x (old_p)."""
    import torch
    p = torch.nn.Parameter(torch.zeros(1000))
    for name, buffers, stats in (("SAM", 1, 0), ("InfoSAM", 1, 2)):          # small tensors: SAM's flat buffer
        opt = OPTIMIZERS[name]([p], torch.optim.SGD, lr=0.1, momentum=0.9)
        for _ in range(2):
            p.grad = torch.ones(1000)
            opt.first_step()
            opt.second_step()
        mem = bench.optimizer_memory(opt)
        assert mem["params"] == 4000 and mem["base_state"] == 4000          # one momentum buffer
        assert mem["running_stats"] == stats * 4000                          # InfoSAM: m and v
        assert mem["working_buffers"] == buffers * 4000                      # InfoSAM: one flat buffer
    big = torch.nn.Parameter(torch.zeros(2 ** 16))                           # large tensors: no buffer at all
    opt = OPTIMIZERS["SAM"]([big], torch.optim.SGD, lr=0.1)
    big.grad = torch.ones(2 ** 16)
    opt.first_step()
    opt.second_step()
    assert opt.memory_stats() == {"working_buffers": 0, "running_stats": 0}
    loop = bench.LoopSAM([p], torch.optim.SGD, lr=0.1)
    p.grad = torch.ones(1000)
    loop.first_step()
    loop.second_step()
    assert bench.optimizer_memory(loop)["working_buffers"] == 4000


def test_memory_table_meets_the_targets():
    table = bench.memory_table(4, "cpu")
    own = {k: (v["working_buffers"] + v["running_stats"]) / v["params"] for k, v in table.items()}
    assert own["SAM"] <= 1.0 and own["InfoSAM"] <= 3.0 and own[bench.REFERENCE] == 1.0
