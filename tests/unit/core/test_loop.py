import pytest
import torch

from lmforge.config import TrainConfig
from lmforge.core.loop import (
    TrainState,
    advance,
    build_optimizer,
    build_scheduler,
    epoch_batches,
    optimizer_batches,
    steps_per_epoch,
    update_early_stopping,
)

LENGTHS = [((i * 7919) % 23) + 2 for i in range(103)]


def test_each_epoch_covers_every_example_once():
    for group in (True, False):
        train = TrainConfig(batch_size=4, grad_accum=2, seed=3, group_by_length=group)
        batches = epoch_batches(LENGTHS, train, epoch=0)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(103))
        assert len(batches) == steps_per_epoch(103, train)
        assert epoch_batches(LENGTHS, train, 1) != batches  # a new order each epoch


def test_grouping_by_length_reduces_padding():
    def padded(group):
        train = TrainConfig(batch_size=8, seed=0, group_by_length=group)
        return sum(max(LENGTHS[i] for i in b) * len(b) for b in epoch_batches(LENGTHS, train, 0))

    assert padded(True) < 0.8 * padded(False)


def test_resuming_the_stream_replays_the_same_batches():
    train = TrainConfig(batch_size=4, grad_accum=3, seed=1)
    per_epoch = steps_per_epoch(len(LENGTHS), train)
    state = TrainState()
    stream = optimizer_batches(LENGTHS, train, state)
    seen = []
    for _ in range(per_epoch + 5):
        batch = next(stream)
        advance(state, batch, per_epoch)
        seen.append(batch.micro_batches)
        if len(seen) == per_epoch - 2:
            saved = TrainState(**state.to_dict())
    resumed = optimizer_batches(LENGTHS, train, saved)
    assert [next(resumed).micro_batches for _ in range(7)] == seen[per_epoch - 2 :]


def test_micro_batches_of_two_processes_partition_the_step():
    train = TrainConfig(batch_size=4, grad_accum=2, seed=1)
    one = next(optimizer_batches(LENGTHS, train, TrainState()))
    ranks = [next(optimizer_batches(LENGTHS, train, TrainState(), rank=r, world=2)) for r in (0, 1)]
    assert sorted(i for r in ranks for m in r.micro_batches for i in m) == sorted(
        i for m in one.micro_batches for i in m
    )
    assert ranks[0].size == ranks[1].size == one.size == 8
    assert ranks[0].examples == ranks[1].examples == one.examples == [i for m in one.micro_batches for i in m]


def test_no_weight_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    groups = build_optimizer(model, 1e-3, 0.1).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}


def test_linear_warmup_then_decay_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, total_steps=10, warmup_ratio=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[1] < lrs[2] == 1.0
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False)) and sched.get_last_lr()[0] == 0.0


def test_phases_restart_warmup_and_decay():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, total_steps=15, warmup_ratio=0.2, phases=[10, 5])
    lrs = []
    for _ in range(15):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    whole = build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 10, 0.2)
    assert lrs[:10] == [whole.lr_lambdas[0](s) for s in range(10)]  # the first phase as a run of its own
    assert lrs[9] < lrs[10] < lrs[11] == 1.0 > lrs[12] > lrs[14] > 0  # then a fresh warmup and decay
    assert sched.get_last_lr()[0] == 0.0


def test_early_stopping_counts_evaluations_without_gain():
    state = TrainState()
    assert update_early_stopping(state, 0.5, patience=2)
    assert not update_early_stopping(state, 0.5, patience=2) and not state.stopped_early
    assert not update_early_stopping(state, 0.4, patience=2) and state.stopped_early
    assert state.best_metric == 0.5


@pytest.mark.parametrize("shape", ["linear", "cosine", "constant"])
def test_each_schedule_equals_transformers_after_the_warmup(shape):
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    reference = {
        "linear": get_linear_schedule_with_warmup,
        "cosine": get_cosine_schedule_with_warmup,
        "constant": lambda opt, warmup, total: get_constant_schedule_with_warmup(opt, warmup),
    }[shape]
    ours = build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 50, 0.1, shape=shape)
    theirs = reference(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 5, 50)
    for step in range(5, 50):  # the warmup differs by design: ours starts at 1 / (warmup + 1), not 0
        assert ours.lr_lambdas[0](step) == pytest.approx(theirs.lr_lambdas[0](step), abs=1e-12), step
    assert ours.lr_lambdas[0](0) == pytest.approx(1 / 6)


@pytest.mark.parametrize("name", ["adamw", "adafactor", "sgd"])
def test_each_optimizer_trains_and_its_state_survives_a_checkpoint(tmp_path, name):
    from lmforge.core import checkpoint as ckpt

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 2))
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    opt = build_optimizer(model, 1e-2, 0.01, name)
    sched = build_scheduler(opt, 40, 0.0)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step(), sched.step(), opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = ckpt.save_checkpoint(tmp_path, 20, tensors, opt, sched, {"step": 20}, keep=1)
    fresh = build_optimizer(model, 1e-2, 0.01, name)
    ckpt.load_checkpoint(path, model, fresh, build_scheduler(fresh, 40, 0.0))
    for a, b in zip(opt.state.values(), fresh.state.values(), strict=True):
        for key in a:
            assert torch.as_tensor(a[key]).equal(torch.as_tensor(b[key])), (name, key)


def test_gradient_checkpointing_gives_the_same_gradients_and_keeps_fewer_activations():
    from lmforge.core.loop import enable_gradient_checkpointing
    from lmforge.models.classifier import load_classifier

    def gradients_and_saved_bytes(checkpointing: bool):
        model, tokenizer = load_classifier("tiny-bert", ["a", "b"], seed=0, dropout=0.0)
        if checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        inputs = tokenizer(["a gorgeous , witty film"] * 8, return_tensors="pt")
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):  # fmt: skip
            loss = model(**inputs, labels=torch.tensor([0, 1] * 4)).loss
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, sum(saved)

    plain, plain_bytes = gradients_and_saved_bytes(False)
    checkpointed, checkpointed_bytes = gradients_and_saved_bytes(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name
    assert checkpointed_bytes < 0.7 * plain_bytes  # the layers' activations are recomputed, not kept
