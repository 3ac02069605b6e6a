import pytest
import torch

from lmforge.errors import UserError
from lmforge.methods.adalora.allocator import RankAllocator, budget_at
from lmforge.methods.adalora.layers import SVDLinear, orthogonal_penalty, svd_layers


def layer(seed=0, r=2, d_in=3, d_out=2):
    torch.manual_seed(seed)
    return SVDLinear(torch.nn.Linear(d_in, d_out), r=r, alpha=4.0, dropout=0.0)


def allocator(layers, **kw):
    args = dict(init_r=2, target_r=1, tinit=2, tfinal=2, delta_t=2, beta1=0.5, beta2=0.25, total_steps=12)
    args.update(kw)
    return RankAllocator(layers, **args)


def test_moving_averages_against_hand_computed_values():
    m = layer()
    alloc = allocator({"m": m})
    with torch.no_grad():
        m.lora_E.copy_(torch.tensor([[2.0], [-1.0]]))
    grads = [torch.tensor([[0.5], [1.0]]), torch.tensor([[-1.5], [0.0]])]
    i_bar, u_bar = torch.zeros(2, 1), torch.zeros(2, 1)
    for g in grads:
        m.lora_E.grad = g.clone()
        alloc.update_importance()
        sensitivity = (m.lora_E.detach() * g).abs()  # eq. 6
        i_bar = 0.5 * i_bar + 0.5 * sensitivity  # eq. 8
        u_bar = 0.25 * u_bar + 0.75 * (sensitivity - i_bar).abs()  # eq. 9
    # by hand: step 1: I=[1,1], I_bar=[.5,.5], U_bar=[.375,.375]
    #          step 2: I=[3,0], I_bar=[1.75,.25], U_bar=[1.03125,.28125]
    assert torch.allclose(i_bar.view(-1), torch.tensor([1.75, 0.25]))
    assert torch.allclose(u_bar.view(-1), torch.tensor([1.03125, 0.28125]))
    assert torch.allclose(alloc.score("m.lora_E", m.lora_E), i_bar * u_bar)


def test_triplet_score_is_equation_10():
    m = layer(d_in=3, d_out=2, r=2)
    alloc = allocator({"m": m})
    s_e, s_b, s_a = torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0, 4.0], [3.0, 0.0]]), torch.arange(6.0).view(2, 3)
    for p, s in (("m.lora_E", s_e), ("m.lora_B", s_b), ("m.lora_A", s_a)):
        alloc.importance[p], alloc.uncertainty[p] = s, torch.ones_like(s)
    # triplet 0: 1 + mean(1, 3) + mean(0, 1, 2) = 4; triplet 1: 2 + mean(4, 0) + mean(3, 4, 5) = 8
    assert alloc.triplet_scores()["m"].tolist() == [4.0, 8.0]


def test_budget_schedule_is_cubic_between_tinit_and_t_minus_tfinal():
    kw = dict(init_budget=120, target_budget=40, tinit=100, tfinal=200, total=1100)
    assert budget_at(1, **kw) == 120 and budget_at(100, **kw) == 120
    assert budget_at(500, **kw) == 40 + int(80 * 0.5**3)  # midway: (1 - 1/2)^3
    assert budget_at(900, **kw) == 40 and budget_at(1100, **kw) == 40
    values = [budget_at(t, **kw) for t in range(100, 901)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_every_allocation_keeps_exactly_the_budget():
    layers = {f"m{i}": layer(seed=i, r=3, d_in=5, d_out=4) for i in range(3)}
    alloc = allocator(layers, init_r=3, target_r=1, tinit=2, tfinal=3, delta_t=2, total_steps=20)
    torch.manual_seed(0)
    for step in range(1, 21):
        for m in layers.values():
            with torch.no_grad():  # stand-in for an optimizer step that revives masked triplets
                m.lora_E.add_(torch.randn_like(m.lora_E))
            for p in (m.lora_A, m.lora_E, m.lora_B):
                p.grad = torch.randn_like(p)
        budget = alloc.step(step)
        if step > 2 and (step % 2 == 0 or step >= 17):  # b(t) reaches b(T) at T - tfinal = 17
            assert sum(m.rank() for m in layers.values()) == budget
    assert budget == 3 and alloc.history[-1]["budget"] == 3
    alloc.check_moved()


def test_final_phase_freezes_the_pattern():
    layers = {f"m{i}": layer(seed=i, r=3, d_in=5, d_out=4) for i in range(2)}
    alloc = allocator(layers, init_r=3, target_r=1, tinit=1, tfinal=4, delta_t=1, total_steps=10)
    patterns = []
    for step in range(1, 11):
        for m in layers.values():
            with torch.no_grad():
                m.lora_E.add_(1.0)
            for p in (m.lora_A, m.lora_E, m.lora_B):
                p.grad = torch.randn_like(p)
        alloc.step(step)
        patterns.append([(m.lora_E != 0).view(-1).tolist() for m in layers.values()])
    assert patterns[5] == patterns[6] == patterns[7] == patterns[8] == patterns[9]  # from step T - tfinal = 6


def revive_and_step(alloc, layers, step):
    """A stand-in for an optimizer step (it moves every Lambda, pruned ones included) and the allocator."""
    for m in layers.values():
        with torch.no_grad():
            m.lora_E.add_(torch.randn_like(m.lora_E))
        for p in (m.lora_A, m.lora_E, m.lora_B):
            p.grad = torch.randn_like(p)
    return alloc.step(step)


def test_tfinal_zero_ends_with_exactly_the_target_budget():
    """peft's default tfinal = 0, with the last multiple of deltaT (8) before the last step (11): the
    steps after it must not revive pruned triplets."""
    torch.manual_seed(0)
    layers = {f"m{i}": layer(seed=i, r=3, d_in=5, d_out=4) for i in range(3)}
    alloc = allocator(layers, init_r=3, target_r=1, tinit=2, tfinal=0, delta_t=4, total_steps=11)
    for step in range(1, 12):
        budget = revive_and_step(alloc, layers, step)
    assert budget == 3 and sum(m.rank() for m in layers.values()) == 3
    assert [h["step"] for h in alloc.history] == [4, 8, 11] and alloc.history[-1]["budget"] == 3
    alloc.check_moved()


def test_check_moved_refuses_an_adapter_that_does_not_hold_the_final_budget():
    torch.manual_seed(0)
    layers = {f"m{i}": layer(seed=i, r=3, d_in=5, d_out=4) for i in range(3)}
    alloc = allocator(layers, init_r=3, target_r=1, tinit=2, tfinal=2, delta_t=2, total_steps=10)
    for step in range(1, 11):
        revive_and_step(alloc, layers, step)
    alloc.check_moved()
    with torch.no_grad():  # an optimizer step the allocator never saw
        for m in layers.values():
            m.lora_E.add_(1.0)
    with pytest.raises(RuntimeError, match="keeps 9 triplets at the end, but the schedule's final budget is 3"):
        alloc.check_moved()
    alloc.apply_mask()  # what the recipe does before saving
    alloc.check_moved()


def official_budget(step, init_budget, target_budget, tinit, tfinal, total):
    """The official code's schedule (QingruZhang/AdaLoRA, loralib/adalora.py, `schedule_threshold`)."""
    if step <= tinit:
        return init_budget
    if step > total - tfinal:
        return target_budget
    mul_coeff = 1 - (step - tinit) / (total - tfinal - tinit)
    return int(target_budget + (init_budget - target_budget) * (mul_coeff**3))


@pytest.mark.parametrize("tinit, tfinal, total", [(100, 200, 1100), (15, 0, 155), (0, 40, 97)])
def test_budget_schedule_is_the_official_codes_and_continuous(tinit, tfinal, total):
    kw = dict(init_budget=432, target_budget=288, tinit=tinit, tfinal=tfinal, total=total)
    values = [budget_at(t, **kw) for t in range(1, total + 1)]
    assert values == [official_budget(t, **kw) for t in range(1, total + 1)]
    assert budget_at(tinit + 1, **kw) <= 432  # no jump above b(0) when the budget starts to fall
    assert budget_at(total - tfinal, **kw) == 288  # b(T) is reached where the final phase begins


def test_a_budget_that_cannot_move_is_refused():
    with pytest.raises(UserError, match="never moves"):
        allocator({"m": layer()}, tinit=10, tfinal=5, total_steps=15)
    alloc = allocator({"m": layer()})
    with pytest.raises(RuntimeError, match="never re-allocated"):
        alloc.check_moved()


def official_penalty(model):
    """The official code's regulariser, term by term (QingruZhang/AdaLoRA, `compute_orth_regu`, gamma 1)."""
    total, count = 0.0, 0
    for name, p in model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            total = total + torch.norm(cov - torch.eye(cov.shape[0]), p="fro")
            count += 1
    return total / count


def test_orthogonal_penalty_forms_against_a_matrix_by_matrix_computation():
    torch.manual_seed(0)
    model = torch.nn.Sequential(layer(seed=1, r=3, d_in=5, d_out=4), layer(seed=2, r=3, d_in=5, d_out=4))
    model.append(layer(seed=3, r=2, d_in=6, d_out=3))  # a second shape: grouped separately
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    layers = svd_layers(model).values()
    squared = [
        torch.linalg.matrix_norm(m.lora_A @ m.lora_A.T - torch.eye(m.r)) ** 2
        + torch.linalg.matrix_norm(m.lora_B.T @ m.lora_B - torch.eye(m.r)) ** 2
        for m in layers
    ]
    assert torch.allclose(orthogonal_penalty(layers), torch.stack(squared).sum() / 6)
    assert torch.allclose(orthogonal_penalty(layers, "official"), official_penalty(model))
    with pytest.raises(ValueError, match="'cubic'"):
        orthogonal_penalty(layers, "cubic")


def test_squared_form_gradient_is_twice_the_norm_times_the_official_one():
    """d||G - I||^2 = 2 ||G - I|| d||G - I||: per matrix, the squared form's gradient is the official
    one's times 2 ||G - I||_F (the factor docs/adalora.md gives for MiniLM's shapes)."""
    m = layer(seed=4, r=3, d_in=7, d_out=5)
    m.lora_B.requires_grad_(False)
    grads = {}
    for form in ("squared", "official"):
        m.lora_A.grad = None
        orthogonal_penalty([m], form).backward()
        grads[form] = m.lora_A.grad.clone()
    norm = torch.linalg.matrix_norm(m.lora_A @ m.lora_A.T - torch.eye(3)).detach()
    assert torch.allclose(grads["squared"], 2 * norm * grads["official"], rtol=1e-4)


def test_orthogonal_penalty_is_zero_for_orthogonal_factors_only():
    m = layer(r=3, d_in=5, d_out=4)
    q, _ = torch.linalg.qr(torch.randn(5, 5))
    p, _ = torch.linalg.qr(torch.randn(4, 4))
    with torch.no_grad():
        m.lora_A.copy_(q[:3])  # rows orthonormal: Q Q^T = I
        m.lora_B.copy_(p[:, :3])  # columns orthonormal: P^T P = I
    model = torch.nn.Sequential(m)
    assert orthogonal_penalty(svd_layers(model).values()).item() < 1e-10
    with torch.no_grad():
        m.lora_A.mul_(2)
    assert orthogonal_penalty(svd_layers(model).values()).item() > 1.0
    assert list(svd_layers(model)) == ["0"]


def test_merged_equals_unmerged():
    m = layer(r=3, d_in=5, d_out=4)
    with torch.no_grad():
        m.lora_E.normal_()
    x = torch.randn(7, 5)
    before = m(x)
    m.merge()
    assert torch.allclose(m(x), before, atol=1e-6)
    m.unmerge()
    assert torch.allclose(m(x), before, atol=1e-6)
    assert not torch.allclose(m.base(x), before)


def test_allocator_state_round_trips():
    layers = {f"m{i}": layer(seed=i, r=3, d_in=5, d_out=4) for i in range(2)}
    alloc = allocator(layers, init_r=3, target_r=1, tinit=1, tfinal=2, delta_t=1, total_steps=10)
    for step in range(1, 5):
        for m in layers.values():
            for p in (m.lora_A, m.lora_E, m.lora_B):
                p.grad = torch.randn_like(p)
        alloc.step(step)
    copy = allocator(layers, init_r=3, target_r=1, tinit=1, tfinal=2, delta_t=1, total_steps=10)
    copy.load_state_dict(alloc.state_dict())
    assert copy.history == alloc.history and copy.fixed == alloc.fixed
    for name in layers:
        assert torch.equal(copy.triplet_scores()[name], alloc.triplet_scores()[name])
