"""Fused AdamW against the reference and torch.optim.AdamW; stochastic rounding is unbiased."""

from __future__ import annotations

import pytest
import torch

from koi_kernels import FusedAdamW, adamw_reference, stochastic_round_bf16


@pytest.mark.parametrize("shape", [(7,), (33, 65), (1000,), (3, 5, 129)])
def test_fp32_matches_torch_adamw_over_steps(shape, device):
    g = torch.Generator().manual_seed(sum(shape))
    start = torch.randn(shape, generator=g)
    grads = [torch.randn(shape, generator=g) for _ in range(5)]
    ours = torch.nn.Parameter(start.clone().to(device))
    theirs = torch.nn.Parameter(start.clone().to(device))
    opt_ours = FusedAdamW([ours], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    opt_theirs = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for grad in grads:
        ours.grad, theirs.grad = grad.to(device), grad.to(device)
        opt_ours.step()
        opt_theirs.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(opt_ours.state[ours]["exp_avg_sq"], opt_theirs.state[theirs]["exp_avg_sq"], atol=1e-7, rtol=1e-5)


def test_bf16_step_lands_on_a_neighbour_of_the_fp32_result(device):
    g = torch.Generator().manual_seed(0)
    start = torch.randn(4096, generator=g)
    grad = torch.randn(4096, generator=g)
    p = torch.nn.Parameter(start.to(device, torch.bfloat16))
    opt = FusedAdamW([p], lr=1e-3, weight_decay=0.0)
    p.grad = grad.to(device, torch.bfloat16)
    exact = start.to(torch.bfloat16).float().clone()
    m, v = torch.zeros(4096), torch.zeros(4096)
    adamw_reference(exact, p.grad.float().cpu(), m, v, step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    opt.step()
    got = p.detach().float().cpu()
    # the two bf16 neighbours of the exact fp32 result: truncated (noise 0) and rounded away (noise 0xFFFF)
    toward_zero = stochastic_round_bf16(exact, torch.zeros(4096, dtype=torch.int32)).float()
    away = stochastic_round_bf16(exact, torch.full((4096,), 0xFFFF, dtype=torch.int32)).float()
    assert bool(((got == toward_zero) | (got == away)).all())
    assert 0.05 < float((got == away).float().mean()) < 0.95  # both directions happen


def test_stochastic_rounding_is_unbiased():
    x = torch.full((200_000,), 1.0 + 2**-10)  # 1/8 of the way from 1.0 to the next bf16, 1 + 2**-7
    noise = torch.randint(0, 2**16, x.shape, generator=torch.Generator().manual_seed(0))
    rounded = stochastic_round_bf16(x, noise).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert abs(rounded.mean().item() - x[0].item()) < 2e-5  # nearest rounding would give exactly 1.0
    assert x.to(torch.bfloat16).float()[0].item() == 1.0


def test_8bit_states_follow_fp32_adamw_and_take_two_bytes_per_parameter(monkeypatch):
    """The algorithm's quality, on its torch form (the kernel is held to that form below)."""
    from koi_kernels import AdamW8bit

    monkeypatch.setenv("KOI_KERNELS", "torch")
    torch.manual_seed(0)
    target = torch.randn(64, 300)
    results = {}
    for name, cls in (("fp32", torch.optim.AdamW), ("8bit", AdamW8bit)):
        w = torch.nn.Parameter(torch.zeros(64, 300))
        opt = cls([w], lr=3e-2, betas=(0.9, 0.95), weight_decay=0.0)
        for _ in range(200):
            loss = ((w - target) ** 2 * torch.linspace(0.01, 10, 300)).mean()  # curvature spread over 3 decades
            opt.zero_grad()
            loss.backward()
            opt.step()
        results[name] = (w.detach().clone(), loss.item(), opt)
    (w32, loss32, _), (w8, loss8, opt8) = results["fp32"], results["8bit"]
    assert loss8 < 1.5 * loss32 + 1e-4 and loss8 < 0.05
    assert (w8 - w32).abs().max() < 0.1
    assert opt8.state_bytes() == 64 * 300 * 2 + 2 * -(-64 * 300 // 256) * 4  # fp8 m and v, one fp32 scale per 256


@pytest.mark.parametrize("shape,dtype", [((1000,), torch.float32), ((33, 65), torch.float32), ((3, 300), torch.bfloat16)])
def test_8bit_kernel_matches_its_torch_reference(shape, dtype, device):
    """The Triton step and the torch step, from the same states, agree on parameters and both moments."""
    from koi_kernels.ops.adamw8bit import _encode, adamw8bit_reference
    from koi_kernels.ops.adamw8bit_triton import adamw8bit_step

    g = torch.Generator().manual_seed(sum(shape))
    p = (torch.randn(shape, generator=g)).to(dtype)
    m, v = torch.randn(shape, generator=g) * 1e-2, torch.rand(shape, generator=g) * 1e-4
    options = dict(step=7, lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    states = []
    for _ in range(2):
        m_codes, m_scale = _encode(m)
        v_codes, v_scale = _encode(v.sqrt())
        states.append(dict(m_codes=m_codes.to(device), m_scale=m_scale.to(device), v_codes=v_codes.to(device), v_scale=v_scale.to(device)))
    ours, theirs = p.clone().to(device), p.clone().to(device)
    grad = torch.randn(shape, generator=g).to(device, dtype)
    adamw8bit_step(ours, grad, states[0], **options)
    adamw8bit_reference(theirs, grad, states[1], **options)
    tolerance = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(ours.float(), theirs.float(), **tolerance)
    for moment in ("m", "v"):
        torch.testing.assert_close(states[0][f"{moment}_scale"], states[1][f"{moment}_scale"], atol=0, rtol=1e-5)
        # Nearly equal values may round to neighbouring fp8 codes, never further apart (e4m3 codes of
        # one sign are ordered like their values).
        a = states[0][f"{moment}_codes"].cpu().view(torch.int8).int()
        b = states[1][f"{moment}_codes"].cpu().view(torch.int8).int()
        assert (a - b).abs().max() <= 1
        assert (a != b).float().mean() < 0.05


def test_8bit_bf16_weights_round_stochastically_to_a_neighbour(device):
    """bf16 weights under 8-bit AdamW keep small updates (stochastic rounding), kernel and torch form alike."""
    from koi_kernels import AdamW8bit
    from koi_kernels.ops.adamw8bit import _encode, adamw8bit_reference

    g = torch.Generator().manual_seed(3)
    start = torch.randn(4096, generator=g)
    grad = torch.randn(4096, generator=g)
    p = torch.nn.Parameter(start.to(device, torch.bfloat16))
    opt = AdamW8bit([p], lr=1e-3, weight_decay=0.0, seed=5)
    p.grad = grad.to(device, torch.bfloat16)
    opt.step()
    exact = start.to(torch.bfloat16).float().clone()
    zeros = torch.zeros(4096)
    state = dict(zip(("m_codes", "m_scale"), _encode(zeros))) | dict(zip(("v_codes", "v_scale"), _encode(zeros)))
    adamw8bit_reference(exact, grad.to(torch.bfloat16).float(), state, step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                        weight_decay=0.0)
    got = p.detach().float().cpu()
    toward_zero = stochastic_round_bf16(exact, torch.zeros(4096, dtype=torch.int32)).float()
    away = stochastic_round_bf16(exact, torch.full((4096,), 0xFFFF, dtype=torch.int32)).float()
    assert bool(((got == toward_zero) | (got == away)).all())
    assert 0.05 < float((got == away).float().mean()) < 0.95  # round-to-nearest would give one fixed direction


def test_8bit_bf16_weights_keep_updates_smaller_than_half_a_bf16_step(monkeypatch):
    """An update of 1/8 of a bf16 step, 64 times: round-to-nearest loses all of it, stochastic rounding keeps it.
    (The torch form, for speed under the interpreter; the kernel is held to it by the neighbour test.)"""
    from koi_kernels import AdamW8bit

    monkeypatch.setenv("KOI_KERNELS", "torch")
    p = torch.nn.Parameter(torch.ones(8192, dtype=torch.bfloat16))
    opt = AdamW8bit([p], lr=2**-10, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0)  # each step moves p by exactly lr
    for _ in range(64):
        p.grad = -torch.ones_like(p)
        opt.step()
    moved = float(p.detach().float().mean()) - 1.0
    assert abs(moved - 64 * 2**-10) < 0.01  # 0.0625 expected; nearest rounding would leave 0.0


def _optimizer(kind: str, param: torch.nn.Parameter) -> torch.optim.Optimizer:
    from koi_kernels import AdamW8bit

    cls = FusedAdamW if kind == "fused" else AdamW8bit
    return cls([param], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, seed=3)


def _state(opt: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    return {k: v.detach().clone() for k, v in opt.state[param].items()}


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key].view(torch.uint8) if a[key].dtype == torch.float8_e4m3fn else a[key],
                           b[key].view(torch.uint8) if b[key].dtype == torch.float8_e4m3fn else b[key]), key


@pytest.mark.parametrize("path", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["fused", "8bit"])
def test_a_step_skipped_on_the_device_leaves_no_trace(kind, dtype, path, device, monkeypatch):
    """With found_inf = 1 a step, even on a NaN gradient, changes no weight, moment or count, and the run
    goes on bit for bit like one that never called step() (the same rounding noise included); with
    found_inf = 0 it is the ungated step. Koi's late instability judging rests on both."""
    monkeypatch.setenv("KOI_KERNELS", path)
    g = torch.Generator().manual_seed(1)
    start = torch.randn(3, 300, generator=g)
    grads = [torch.randn(3, 300, generator=g) for _ in range(3)]
    gated = torch.nn.Parameter(start.clone().to(device, dtype))
    plain = torch.nn.Parameter(start.clone().to(device, dtype))
    opt_gated, opt_plain = _optimizer(kind, gated), _optimizer(kind, plain)
    flag = {value: torch.tensor(value, device=device) for value in (0.0, 1.0)}
    for i, grad in enumerate(grads):
        gated.grad, plain.grad = grad.to(device, dtype), grad.to(device, dtype)
        opt_gated.found_inf = flag[0.0]
        opt_gated.step()
        opt_plain.step()
        assert torch.equal(gated, plain), i
        _same(_state(opt_gated, gated), _state(opt_plain, plain))
        before = (gated.detach().clone(), _state(opt_gated, gated))
        gated.grad = torch.full_like(gated, float("nan"))
        opt_gated.found_inf = flag[1.0]
        opt_gated.step()
        assert torch.equal(gated, before[0]), i
        _same(_state(opt_gated, gated), before[1])
    assert float(opt_gated.state[gated]["step"]) == len(grads)


@pytest.mark.parametrize("kind", ["fused", "8bit"])
def test_a_loaded_state_keeps_its_dtypes_and_resumes_bit_for_bit(kind, device):
    """torch's load_state_dict casts floating state to the parameter's dtype: 8-bit codes would come back
    as bf16 or fp32 and fp32 moments of bf16 weights as bf16. Loaded here, each keeps its dtype, and the
    step after a load equals the step without one."""
    import copy

    g = torch.Generator().manual_seed(2)
    start = torch.randn(600, generator=g)
    grads = [torch.randn(600, generator=g) for _ in range(3)]
    first = torch.nn.Parameter(start.clone().to(device, torch.bfloat16))
    opt = _optimizer(kind, first)
    for grad in grads[:2]:
        first.grad = grad.to(device, torch.bfloat16)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    second = torch.nn.Parameter(first.detach().clone())
    resumed = _optimizer(kind, second)
    resumed.load_state_dict(saved)
    _same(_state(resumed, second), _state(opt, first))
    first.grad, second.grad = grads[2].to(device, torch.bfloat16), grads[2].to(device, torch.bfloat16)
    opt.step()
    resumed.step()
    assert torch.equal(first, second)
    _same(_state(resumed, second), _state(opt, first))
