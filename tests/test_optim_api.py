"""samlib.optim in researchers' training code: the torch ecosystem's edges (review samlib-code.md §1-§2).

Each test here failed on the reviewed commit (2f053c2) and names the review item it guards.
"""
import copy
import os
import pickle
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from samlib.optim import (ASAM, OPTIMIZERS, SAM, SSAM, FriendlySAM, InfoSAM, InverseVarianceSAM, VaSSO,
                          frozen_bn_stats)

STATEFUL = {"SSAM": SSAM, "VaSSO": VaSSO, "FriendlySAM": FriendlySAM, "InfoSAM": InfoSAM,
            "InverseVarianceSAM": InverseVarianceSAM}
ALL = {**OPTIMIZERS, "InverseVarianceSAM": InverseVarianceSAM}
STAT_KEY = {"SSAM": "fisher", "VaSSO": "d", "FriendlySAM": "m", "InfoSAM": "v", "InverseVarianceSAM": "v"}


def _step(opt, params, grad):
    for p, g in zip(params, grad()):
        p.grad = g
    opt.first_step()
    for p, g in zip(params, grad()):
        p.grad = g
    opt.second_step(zero_grad=True)


# ---- §1.2 parameters on several devices ------------------------------------------------------

def test_parameters_on_two_devices_reduce_to_one_norm():
    """FakeTensorMode checks device propagation like CUDA does, without a GPU: every op must see one device."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    warnings.filterwarnings("ignore", "Accessing the data pointer of FakeTensor")
    with FakeTensorMode():
        for cls in (SAM, InfoSAM, ASAM):
            a = nn.Parameter(torch.ones(3, device="cuda:0"))
            b = nn.Parameter(torch.ones(2, 4, device="cuda:1"))
            opt = cls([a, b], torch.optim.SGD, lr=0.1, momentum=0.9)
            for _ in range(2):
                a.grad, b.grad = torch.ones(3, device="cuda:0"), torch.ones(2, 4, device="cuda:1")
                opt.first_step()
                assert a.device == torch.device("cuda:0") and b.device == torch.device("cuda:1")
                a.grad, b.grad = torch.ones(3, device="cuda:0"), torch.ones(2, 4, device="cuda:1")
                opt.second_step(zero_grad=True)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
@pytest.mark.parametrize("name", ["SAM", "InfoSAM", "ASAM"])
def test_two_cuda_devices_match_one(name):
    torch.manual_seed(0)
    w = [torch.randn(3, 4), torch.randn(5)]
    grads = [[torch.randn_like(x) for x in w] for _ in range(6)]
    finals = []
    for devices in (("cuda:0", "cuda:0"), ("cuda:0", "cuda:1")):
        params = [nn.Parameter(x.clone().to(d)) for x, d in zip(w, devices)]
        opt = ALL[name](params, torch.optim.SGD, lr=0.1, momentum=0.9, rho=0.3)
        it = iter(grads)
        for _ in range(3):
            _step(opt, params, lambda: [g.to(p.device) for g, p in zip(next(it), params)])
        finals.append([p.detach().cpu() for p in params])
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b)


# ---- §1.3 a plain state dict, torch.distributed.checkpoint, DTensor ---------------------------

def _linear_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    return model, x, y


def _train(model, opt, x, y, steps):
    for _ in range(steps):
        F.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        F.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)


@pytest.mark.parametrize("name", ["SAM", "InfoSAM", "SSAM"])
def test_dcp_keeps_base_state_and_statistics_and_resumes_exactly(name, tmp_path):
    """get_optimizer_state_dict keeps momentum and the statistics; a fresh optimizer survives DCP's lazy
    initialization with its learning rate intact; dcp.save / dcp.load resume bit for bit."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    make = lambda m: ALL[name](m.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, rho=0.1)  # noqa: E731
    model, x, y = _linear_problem()
    opt = make(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, fresh = get_state_dict(model, opt)                       # DCP's lazy init on a fresh optimizer
        assert opt.param_groups[0]["lr"] == 0.1 and all(p.grad is None for p in model.parameters())
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), _linear_problem()[0].parameters()))
        _train(model, opt, x, y, 3)
        msd, osd = get_state_dict(model, opt)
        keys = set(osd["state"]["0.weight"])
        assert "momentum_buffer" in keys
        assert name == "SAM" or any(k.startswith("samlib.") for k in keys)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp_path))
        _train(model, opt, x, y, 3)
        expected = [p.detach().clone() for p in model.parameters()]

        resumed, _, _ = _linear_problem(seed=1)                       # different weights: must be overwritten
        opt2 = make(resumed)
        msd2, osd2 = get_state_dict(resumed, opt2)
        sd = {"model": msd2, "optim": osd2}
        dcp.load(sd, checkpoint_id=str(tmp_path))
        set_state_dict(resumed, opt2, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    _train(resumed, opt2, x, y, 3)
    for a, b in zip(resumed.parameters(), expected):
        assert torch.equal(a, b)


def test_old_nested_checkpoint_still_loads():
    """samlib < this change saved {state (statistics), param_groups, base_optimizer (a nested dict)}."""
    model, x, y = _linear_problem()
    opt = InfoSAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    _train(model, opt, x, y, 2)
    new = opt.state_dict()
    params = list(model.parameters())
    old = {"state": {i: {k[len("samlib."):]: v for k, v in new["state"][i].items() if k.startswith("samlib.")}
                     for i in range(len(params))},
           "param_groups": new["param_groups"], "base_optimizer": opt.base_optimizer.state_dict()}
    old = copy.deepcopy(old)
    _train(model, opt, x, y, 2)
    expected = [p.detach().clone() for p in model.parameters()]
    model2, _, _ = _linear_problem()                              # replay the first two steps
    _train(model2, InfoSAM(model2.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9), x, y, 2)
    opt3 = InfoSAM(model2.parameters(), torch.optim.SGD, lr=0.5, momentum=0.9)
    opt3.load_state_dict(old)
    assert opt3.param_groups[0]["lr"] == 0.1
    _train(model2, opt3, x, y, 2)
    for a, b in zip(model2.parameters(), expected):
        assert torch.equal(a, b)


def test_state_dict_namespaces_the_variant_so_adams_step_survives():
    """SSAM's int step counter and Adam's tensor "step" live side by side in one plain state dict."""
    model, x, y = _linear_problem()
    opt = SSAM(model.parameters(), torch.optim.Adam, lr=0.01, rho=0.1, mask_interval=2)
    _train(model, opt, x, y, 3)
    entry = opt.state_dict()["state"][0]
    assert torch.is_tensor(entry["step"]) and entry["samlib.step"] == 3
    assert "exp_avg" in entry and "samlib.fisher" in entry


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dtensor_worker(rank, port, out):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        fully_shard(model)
        try:
            SAM(model.parameters(), torch.optim.SGD, lr=0.1)
            msg = "constructed"
        except TypeError as e:
            msg = str(e)
        with open(out, "w", encoding="utf-8") as f:
            f.write(msg)
    finally:
        dist.destroy_process_group()


def test_dtensor_parameters_raise_a_clear_error_at_construction(tmp_path):
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path / "msg.txt"
    mp.spawn(_dtensor_worker, args=(_free_port(), str(out)), nprocs=1, join=True)
    msg = out.read_text(encoding="utf-8")
    assert "DTensor" in msg and "FSDP2" in msg and "DistributedDataParallel" in msg


# ---- §1.4 one new parameter must not reset the others' statistics --------------------------

@pytest.mark.parametrize("name", list(STATEFUL))
def test_a_new_parameter_leaves_the_others_statistics_alone(name):
    torch.manual_seed(0)
    grads = [(torch.randn(4), torch.randn(3)) for _ in range(14)]
    a, b = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(3))
    a_alone = nn.Parameter(torch.zeros(4))
    opt = STATEFUL[name]([a, b], torch.optim.SGD, lr=0.01, rho=0.1)
    ref = STATEFUL[name]([a_alone], torch.optim.SGD, lr=0.01, rho=0.1)
    for t, (ga, gb) in enumerate(grads):
        with_b = t >= 5                                      # b is unused for five steps, then used
        _step(opt, [a, b] if with_b else [a], lambda: [ga, gb] if with_b else [ga])
        _step(ref, [a_alone], lambda: [ga])
        if t == 5:
            assert torch.equal(opt.state[a][STAT_KEY[name]], ref.state[a_alone][STAT_KEY[name]])
    if name in ("VaSSO", "FriendlySAM", "InfoSAM"):                          # per-parameter rules: a's
        assert torch.equal(opt.state[a][STAT_KEY[name]], ref.state[a_alone][STAT_KEY[name]])   # never notices b


def test_a_parameter_that_drops_out_keeps_its_statistics_and_frees_the_old_chunk():
    a, b = nn.Parameter(torch.zeros(1000)), nn.Parameter(torch.zeros(1000))
    opt = InfoSAM([a, b], torch.optim.SGD, lr=0.0)
    torch.manual_seed(0)
    _step(opt, [a, b], lambda: [torch.randn(1000), torch.randn(1000)])
    v_b = opt.state[b]["v"].clone()
    _step(opt, [a], lambda: [torch.randn(1000)])
    assert torch.equal(opt.state[b]["v"], v_b)
    assert opt.state[b]["v"]._base is None                        # a copy, not a view of the old chunk
    assert opt.memory_stats()["running_stats"] == 2 * 2 * 1000 * 4  # m and v of a (chunk) and of b (copies)


# ---- §1.5 base-optimizer kwargs that collide with SAM's -----------------------------------

def test_adadelta_rho_clash_raises_and_base_kwargs_passes_both():
    p = nn.Parameter(torch.ones(3))
    with pytest.raises(TypeError, match="Adadelta takes its own 'rho'.*base_kwargs"):
        SAM([p], torch.optim.Adadelta, rho=0.05, lr=1.0)
    torch.manual_seed(0)
    grads = [torch.randn(3) for _ in range(4)]
    q, r = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    opt = SAM([q], torch.optim.Adadelta, rho=0.0, base_kwargs={"rho": 0.7, "lr": 1.0})
    ada = torch.optim.Adadelta([r], rho=0.7, lr=1.0)
    assert opt.param_groups[0]["rho"] == 0.7 and opt.param_groups[0]["sam_rho"] == 0.0
    for g in grads:
        _step(opt, [q], lambda: [g])
        r.grad = g
        ada.step()
    assert torch.equal(q, r)                                     # rho=0 reproduces Adadelta, its own rho intact
    with pytest.raises(ValueError, match="Invalid rho"):
        SAM([p], torch.optim.Adadelta, rho=-1.0, base_kwargs={})


# ---- §1.7 memory format, aliases, in-place mode --------------------------------------------

@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("name", ["SAM", "InfoSAM", "ASAM"])
def test_channels_last_is_kept_at_w_plus_eps(name, inplace):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    opt = ALL[name](conv.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, rho=0.05, inplace=inplace)
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    w0 = conv.weight.detach().clone()
    conv(x).square().sum().backward()
    g = conv.weight.grad.clone()
    opt.first_step(zero_grad=True)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert float((conv.weight.detach() - w0).flatten() @ g.flatten()) > 0    # moved uphill
    conv(x).square().sum().backward()
    assert conv.weight.grad.is_contiguous(memory_format=torch.channels_last)
    opt.second_step()
    assert opt.base_optimizer.state[conv.weight]["momentum_buffer"].is_contiguous(memory_format=torch.channels_last)
    if name == "InfoSAM":
        assert opt.state[conv.weight]["m"].is_contiguous(memory_format=torch.channels_last)


def test_channels_last_is_kept_by_sams_multi_tensor_path():
    """Large tensors (no flat copy): w + eps is built from the gradient, which follows the weight's layout."""
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 64, 3, bias=False).to(memory_format=torch.channels_last)   # 73k elements
    opt = SAM(conv.parameters(), torch.optim.SGD, lr=0.1, rho=0.05)
    x = torch.randn(1, 128, 5, 5).to(memory_format=torch.channels_last)
    w0 = conv.weight.detach().clone()
    conv(x).square().sum().backward()
    g = conv.weight.grad.clone()
    opt.first_step(zero_grad=True)
    assert opt.memory_stats()["working_buffers"] == 0                    # the multi-tensor path
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv.weight.detach(), w0 + 0.05 * g / g.norm())
    opt.restore()
    assert torch.equal(conv.weight.detach(), w0)


class _CachedTranspose(nn.Module):
    """A layer that caches a view of its weight (pre-packed weights, captured graphs do the same)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2, 2))
        self.wt = self.weight.t()

    def forward(self, x):
        return x @ self.wt


def test_inplace_mode_is_address_stable_and_aliases_see_w_plus_eps():
    for inplace, sees_eps in ((False, False), (True, True)):
        m = _CachedTranspose()
        opt = SAM(m.parameters(), torch.optim.SGD, lr=0.0, rho=1.0, inplace=inplace)
        x = torch.ones(1, 2)
        ptr = m.weight.data_ptr()
        m(x).sum().backward()
        opt.first_step(zero_grad=True)
        assert (m.weight.data_ptr() == ptr) == inplace
        assert torch.equal(m(x), x @ m.weight.detach().t()) == sees_eps   # the documented alias caveat
        m(x).sum().backward()
        opt.second_step()
        assert m.weight.data_ptr() == ptr and torch.equal(m.weight, torch.ones(2, 2))


def test_storage_swap_caveat_is_documented():
    doc = SAM.__mro__[1].__doc__
    assert "alias" in doc.lower() and "inplace=True" in doc


# ---- §1.9 the smaller ones ----------------------------------------------------------------

def test_a_parameter_listed_twice_is_restored():
    warnings.simplefilter("ignore")
    p = nn.Parameter(torch.zeros(2))
    opt = SAM([p, p], torch.optim.SGD, lr=0.0, rho=1.0)
    p.grad = torch.tensor([1.0, 0.0])
    opt.first_step()
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, 0.0]))   # perturbed once, norm counted once
    opt.second_step()
    assert torch.equal(p.detach(), torch.zeros(2))


@pytest.mark.parametrize("name", ["SAM", "VaSSO", "InfoSAM"])
def test_deepcopy_and_pickle_give_a_working_independent_optimizer(name):
    model, x, y = _linear_problem()
    opt = ALL[name](model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    _train(model, opt, x, y, 2)
    model2, opt2 = copy.deepcopy((model, opt))
    model3, opt3 = pickle.loads(pickle.dumps((model, opt)))
    _train(model, opt, x, y, 2)
    for m, o in ((model2, opt2), (model3, opt3)):
        assert o.param_groups is o.base_optimizer.param_groups
        _train(m, o, x, y, 2)
        for a, b in zip(m.parameters(), model.parameters()):
            assert torch.equal(a, b)


def test_stale_chunks_are_freed_after_model_double():
    m = nn.Linear(100, 100)
    opt = InfoSAM(m.parameters(), torch.optim.SGD, lr=0.1)
    _step(opt, list(m.parameters()), lambda: [torch.ones_like(p) for p in m.parameters()])
    m.double()
    _step(opt, list(m.parameters()), lambda: [torch.ones_like(p) for p in m.parameters()])
    assert len(opt._chunks) == 1
    n = sum(p.numel() for p in m.parameters())
    assert opt.memory_stats() == {"working_buffers": 8 * n, "running_stats": 2 * 8 * n}
    assert opt.state[m.weight]["m"].dtype == torch.float64


def test_a_resized_parameter_gets_a_new_chunk():
    p = nn.Parameter(torch.zeros(2))
    opt = SAM([p], torch.optim.SGD, lr=0.1, rho=1.0)
    _step(opt, [p], lambda: [torch.ones(2)])
    p.data = torch.zeros(4)
    p.grad = torch.ones(4)
    opt.first_step()
    torch.testing.assert_close(p.detach(), torch.full((4,), 0.5))
    opt.second_step()


def test_sparse_gradients_and_complex_parameters_raise_clear_errors():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = SAM(emb.parameters(), torch.optim.SGD, lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradient.*sparse=False"):
        opt.first_step()
    with pytest.raises(TypeError, match="complex parameters.*view_as_real"):
        SAM([nn.Parameter(torch.ones(2, dtype=torch.complex64))], torch.optim.SGD, lr=0.1)


def test_first_step_twice_raises_and_restore_recovers():
    p = nn.Parameter(torch.zeros(2))
    opt = VaSSO([p], torch.optim.SGD, lr=0.0, theta=0.5)
    p.grad = torch.tensor([1.0, 0.0])
    opt.first_step()
    d = opt.state[p]["d"].clone()
    with pytest.raises(RuntimeError, match="twice.*restore"):
        opt.first_step()
    assert torch.equal(opt.state[p]["d"], d)                      # the statistics did not advance twice
    opt.restore()
    assert torch.equal(p.detach(), torch.zeros(2))
    opt.first_step()
    opt.second_step()


def test_add_param_group_validates_and_base_add_param_group_names_the_fix():
    p, q, r = (nn.Parameter(torch.ones(2)) for _ in range(3))
    opt = InfoSAM([p], torch.optim.SGD, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="Invalid rho"):
        opt.add_param_group({"params": [q], "rho": -1.0})
    with pytest.raises(ValueError, match="Invalid beta"):
        opt.add_param_group({"params": [q], "beta": 1.5})
    assert len(opt.param_groups) == 1                             # rejected groups are not added
    opt.add_param_group({"params": [q], "rho": 0.2})
    assert opt.param_groups[1]["beta"] == 0.9 and opt.param_groups[1]["momentum"] == 0.9
    assert opt.param_groups is opt.base_optimizer.param_groups
    opt.base_optimizer.add_param_group({"params": [r]})
    for t in (p, q, r):
        t.grad = torch.ones(2)
    with pytest.raises(KeyError, match="wrapper's add_param_group"):
        opt.first_step()


def test_infosam_keeps_float32_statistics_for_float16_parameters():
    """fp16 m, v underflow (|g| ~ 3e-4 gives v ~ 1e-8) and P silently became 1: plain SAM."""
    means = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        torch.manual_seed(0)
        p = nn.Parameter(torch.zeros(1000, dtype=dtype))
        opt = InfoSAM([p], torch.optim.SGD, lr=0.0, rho=0.05, beta=0.9)
        for _ in range(20):
            _step(opt, [p], lambda: [(3e-4 * (1 + 0.5 * torch.randn(1000))).to(dtype)])
        m, v = opt.state[p]["m"], opt.state[p]["v"]
        assert m.dtype == torch.float32 and v.dtype == torch.float32
        means[dtype] = float((m * m / (m * m + v)).mean())
    assert means[torch.float32] < 0.9
    for dtype in (torch.float16, torch.bfloat16):
        assert abs(means[dtype] - means[torch.float32]) < 0.02


@pytest.mark.parametrize("name", list(ALL))
def test_maximize_flips_the_perturbation(name):
    eps = {}
    for maximize in (False, True):
        torch.manual_seed(0)
        p = nn.Parameter(torch.randn(6))
        w0 = p.detach().clone()
        opt = ALL[name]([p], torch.optim.SGD, lr=0.1, maximize=maximize)
        p.grad = torch.randn(6)
        opt.first_step()
        eps[maximize] = p.detach() - w0
    assert eps[False].abs().max() > 0
    torch.testing.assert_close(eps[True], -eps[False])


def test_step_hooks_fire_once_per_sam_step_with_either_api():
    model, x, y = _linear_problem()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    _train(model, opt, x, y, 1)
    assert calls == ["pre", "post"]
    calls.clear()
    opt.step(lambda: F.cross_entropy(model(x), y).backward())
    assert calls == ["pre", "post"]


def test_first_step_inside_autocast_warns():
    model, x, y = _linear_problem()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        F.cross_entropy(model(x), y).backward()
        with pytest.warns(UserWarning, match="autocast"):
            opt.first_step(zero_grad=True)
    opt.restore()


def test_frozen_bn_stats_works_with_the_closure_api():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    calls = []

    def closure():
        with frozen_bn_stats(model) if calls else torch.enable_grad():
            calls.append(1)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        return loss
    opt.step(closure)
    assert int(model[1].num_batches_tracked) == 1 and len(calls) == 2
