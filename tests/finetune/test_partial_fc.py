"""Partial FC: shards, seeded sampling, the sharded softmax against the replicated head, optimiser state, re-sharding.

The 2-process equivalence runs on real gloo processes (`tests/finetune/partial_fc_workers.py`); the end-to-end
checkpoint tests (saved on 2 processes, resumed on 1 and on 2) are in test_train.py.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from finetune.heads import HeadConfig, MarginHead, PartialFCConfig, margin_cross_entropy
from finetune.objective import Objective, build_objective
from finetune.partial_fc import INIT_BLOCK, PartialFC, build_partial_fc, initial_centres, read_rows, shard_range
from finetune.regularisers import RegularisersConfig
from lafs.errors import ConfigError, DataError
from tests.finetune import partial_fc_workers as workers

ARCFACE, COSFACE, CM1 = (1.0, 0.5, 0.0), (1.0, 0.0, 0.4), (1.0, 0.3, 0.2)


def replicated_twin(shard: PartialFC) -> MarginHead:
    """A replicated head with the same margins and centres as the single-process ``shard``."""
    head = MarginHead(shard.num_classes, shard.weight.shape[1], shard.scale, (shard.m1, shard.m2, shard.m3),
                      shard.guard, shard.straight_through, shard.interclass_filter).double()  # fmt: skip
    with torch.no_grad():
        head.weight.copy_(shard.weight)
    return head


# -- shards and initial centres -----------------------------------------------------------------------------------


def test_shards_are_contiguous_blocks_the_first_ones_larger() -> None:
    assert [shard_range(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_range(4, 4, r) for r in range(4)] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    for classes, processes in [(7, 2), (100, 8), (1000003, 16)]:
        ranges = [shard_range(classes, processes, r) for r in range(processes)]
        assert ranges[0][0] == 0 and ranges[-1][1] == classes
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1


def test_initial_centres_are_the_same_for_any_process_count() -> None:
    classes, dim = 2 * INIT_BLOCK + 5, 3  # three seeded blocks, the last one cut
    whole = initial_centres(0, classes, dim, seed=7)
    assert whole.shape == (classes, dim) and whole.std().item() == pytest.approx(0.01, rel=0.05)
    for processes in (2, 3, 5):
        shards = [initial_centres(*shard_range(classes, processes, r), dim, seed=7) for r in range(processes)]
        assert torch.equal(torch.cat(shards), whole)
    assert not torch.equal(initial_centres(0, 10, dim, seed=8), whole[:10])


# -- the sharded softmax on one process ---------------------------------------------------------------------------


def unit_problem(sample_rate: float = 1.0) -> tuple[PartialFC, torch.Tensor, torch.Tensor]:
    """Centres e1, e2, e3 in 4-d and one embedding whose cosines to them are [0.8, 0.3, -0.1] (spec 1(g))."""
    shard = PartialFC(3, 4, margins=ARCFACE, sample_rate=sample_rate).double()
    with torch.no_grad():
        shard.weight.copy_(torch.eye(3, 4, dtype=torch.float64))
    x = torch.tensor([[[0.8, 0.3, -0.1, math.sqrt(1 - 0.74)]]], dtype=torch.float64)
    return shard, x, torch.tensor([0])


def test_hand_computed_arcface_loss() -> None:
    shard, x, y = unit_problem()
    scores = shard(x, y)
    assert scores.cosines[0, 0].tolist() == pytest.approx([0.8, 0.3, -0.1])
    assert scores.cross_entropy().item() == pytest.approx(6.6043e-4, rel=1e-4)  # spec 1(g) property 2
    psi = 0.414411  # cos(acos(0.8) + 0.5), spec 1(g) property 1
    assert scores.logits[0, 0].tolist() == pytest.approx([64 * psi, 64 * 0.3, -6.4], abs=1e-4)
    assert scores.lse[0, 0].item() == pytest.approx(math.log(sum(math.exp(64 * c) for c in (psi, 0.3, -0.1))), abs=1e-4)


def test_hand_computed_loss_over_sampled_classes() -> None:
    shard, x, y = unit_problem(sample_rate=0.5)  # ceil(0.5 x 3) = 2 classes: the positive and one other
    scores = shard(x, y, step=3)
    assert len(scores.classes) == 2 and scores.classes[0] == 0
    other = [0.8, 0.3, -0.1][int(scores.classes[1])]
    expected = math.log1p(math.exp(64 * (other - 0.414411)))  # -log softmax over {target, the sampled other}
    assert scores.cross_entropy().item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    "options",
    [
        {"margins": ARCFACE},
        {"margins": COSFACE, "interclass_filter": 0.1},
        {"margins": CM1, "straight_through": True},
        {"margins": ARCFACE, "guard": "easy"},
    ],
    ids=["arcface", "cosface-filter", "combined-straight-through", "arcface-easy"],
)
@pytest.mark.parametrize("mixed", [False, True], ids=["hard", "mixup"])
def test_one_process_equals_the_replicated_head(options: dict, mixed: bool) -> None:
    torch.manual_seed(0)
    shard = PartialFC(7, 5, **options).double()
    head = replicated_twin(shard)
    x = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)  # two views, as CoReFace makes
    y = torch.tensor([0, 3, 6, 2, -1 if not mixed else 2, 5])
    soft = 0.7 * F.one_hot(y, 7).double() + 0.3 * F.one_hot(y.flip(0), 7).double() if mixed else None
    loss = shard(x, y, soft).cross_entropy()
    grads = torch.autograd.grad(loss, [x, shard.weight])
    expected = margin_cross_entropy(head.logits(head.cosines(x), y, soft), y, soft)
    expected_grads = torch.autograd.grad(expected, [x, head.weight])
    torch.testing.assert_close(loss, expected)
    for ours, theirs in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(ours, theirs)


def test_sampled_softmax_is_the_full_softmax_restricted_to_the_sampled_classes() -> None:
    torch.manual_seed(1)
    shard = PartialFC(40, 6, margins=ARCFACE, sample_rate=0.25, interclass_filter=0.05).double()
    head = replicated_twin(shard)
    x = torch.randn(1, 8, 6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 5, 5, 17, 39, 22, 8, 30])
    scores = shard(x, y, step=0)
    classes = scores.classes
    assert len(classes) == 10 and set(y.tolist()) <= set(classes.tolist())  # ceil(0.25 x 40), positives kept
    loss = scores.cross_entropy()
    loss.backward()
    logits = head.logits(head.cosines(x), y)[..., classes]  # margins and filter work column by column
    expected = margin_cross_entropy(logits, torch.searchsorted(classes, y), None)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(shard.weight.grad, head.weight.grad)
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[classes] = False
    assert shard.weight.grad[untouched].abs().sum() == 0 and shard.weight.grad[classes].abs().sum() > 0


def test_sampling_keeps_every_positive_and_replays_by_step() -> None:
    shard = PartialFC(40, 4, sample_rate=0.25, seed=3)
    x = torch.randn(1, 12, 4)

    def draw(module: PartialFC, labels: torch.Tensor, step: int) -> list[int]:
        return module(x, labels, step=step).classes.tolist()

    few = torch.tensor([1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6])
    first, second = draw(shard, few, 5), draw(shard, few, 5)  # two micro-batches of step 5
    assert len(first) == 10 and {1, 2, 3, 4, 5, 6} <= set(first) and first == sorted(first)
    assert first != second  # each micro-batch draws anew
    assert draw(shard, few, 6) not in (first, second)
    resumed = PartialFC(40, 4, sample_rate=0.25, seed=3)  # a run resumed at step 5 draws the same classes
    assert draw(resumed, few, 5) == first and draw(resumed, few, 5) == second
    many = torch.arange(12) * 3  # 12 positives: more than the 10 sampled, so exactly the positives
    assert draw(shard, many, 7) == many.tolist()
    assert draw(PartialFC(40, 4, sample_rate=0.25, seed=4), few, 5) != first


def test_bad_settings_are_refused() -> None:
    for rate in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"^head\.partial_fc\.sample_rate must lie in \(0, 1\]"):
            PartialFCConfig(sample_rate=rate).validate()
    with pytest.raises(ConfigError, match=r"head\.partial_fc: 4 processes need at least as many classes \(3\)"):
        build_partial_fc(HeadConfig(), 3, 8, processes=4, rank=0, seed=0)
    soft = torch.tensor([[0.5, 0.3, 0.2]])
    with pytest.raises(ValueError, match="at most 2 classes"):
        PartialFC(3, 2)(torch.randn(1, 1, 2), torch.tensor([0]), soft)


@pytest.mark.parametrize("name", ["intraloss", "cluster"])
def test_regularisers_that_read_every_centre_are_refused(name: str) -> None:
    cfg = RegularisersConfig()
    getattr(cfg, name).enabled = True
    with pytest.raises(ConfigError, match=rf"^regularisers\.{name} reads every class centre .* head\.partial_fc"):
        build_objective(PartialFC(6, 4), cfg, num_classes=6, embed_dim=4, num_samples=12)


def test_unpg_on_top_equals_unpg_on_the_replicated_head() -> None:
    torch.manual_seed(2)
    cfg = RegularisersConfig()
    cfg.unpg.enabled = True
    shard = PartialFC(9, 5, margins=ARCFACE, scale=16.0).double()
    ours = build_objective(shard, cfg, num_classes=9, embed_dim=5, num_samples=8)
    theirs = build_objective(replicated_twin(shard), cfg, num_classes=9, embed_dim=5, num_samples=8)
    x = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 8])
    a, b = ours(x, y), theirs(x, y)
    assert a["unpg_loss"] > 0 and set(a) == set(b) == {"margin_loss", "unpg_loss", "loss"}
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    torch.testing.assert_close(torch.autograd.grad(a["loss"], x)[0], torch.autograd.grad(b["loss"], x)[0])


def test_the_shard_is_not_a_submodule_of_the_objective() -> None:
    shard = PartialFC(6, 4)
    objective = build_objective(shard, RegularisersConfig(), num_classes=6, embed_dim=4, num_samples=12)
    assert objective.head is shard and list(objective.parameters()) == [] and objective.state_dict() == {}
    assert isinstance(build_objective(MarginHead(6, 4), RegularisersConfig(), num_classes=6, embed_dim=4,
                                      num_samples=12), Objective)  # fmt: skip


# -- optimiser state and checkpoints ------------------------------------------------------------------------------


def trained_shards(classes: int, processes: int) -> list[tuple[PartialFC, torch.optim.Optimizer]]:
    """Each process's shard after one AdamW step on a random gradient, with its optimiser."""
    shards = []
    for rank in range(processes):
        shard = PartialFC(classes, 3, processes=processes, rank=rank)
        other = torch.nn.Parameter(torch.ones(2))  # the encoder's weights, say
        optimizer = torch.optim.AdamW([other], lr=0.1)
        shard.add_to(optimizer, weight_decay=0.05)
        shard.weight.grad, other.grad = torch.randn_like(shard.weight), torch.ones(2)
        optimizer.step()
        shards.append((shard, optimizer))
    return shards


def test_optimiser_state_of_the_shard_is_saved_per_process_not_in_the_state_dict() -> None:
    ((shard, optimizer),) = trained_shards(5, 1)
    group = optimizer.param_groups[-1]
    assert group["params"] == [shard.weight] and (group["weight_decay"], group["lr_scale"]) == (0.05, 1.0)
    assert list(optimizer.state_dict()["state"]) == [0]  # the other parameter's only
    assert shard.weight in optimizer.state  # (the live state is untouched)
    state = shard.process_state()
    assert set(state) == {"weight", "classes", "optimizer.step", "optimizer.exp_avg", "optimizer.exp_avg_sq"}
    assert state["classes"].tolist() == [0, 5, 5] and torch.equal(state["optimizer.exp_avg"],
                                                                  optimizer.state[shard.weight]["exp_avg"])  # fmt: skip


@pytest.mark.parametrize(("saved", "resumed"), [(3, 2), (2, 3), (3, 1), (1, 4), (2, 2)])
def test_shards_and_their_optimiser_state_reshard_to_another_process_count(
    tmp_path: Path, saved: int, resumed: int
) -> None:
    classes = 11
    files = []
    for rank, (shard, _) in enumerate(trained_shards(classes, saved)):
        files.append(tmp_path / f"rank{rank}.safetensors")
        save_file({k: v.contiguous() for k, v in shard.process_state().items()}, str(files[-1]))
    full = {key: torch.cat([load_file(str(f))[key] for f in files]) for key in ("weight", "optimizer.exp_avg")}
    pieces = []
    for shard, optimizer in trained_shards(classes, resumed):
        shard.load_process_state(files)
        state = optimizer.state[shard.weight]
        assert state["step"].item() == 1.0 and state["step"].device.type == "cpu"
        pieces.append((shard.weight.detach().clone(), state["exp_avg"].clone()))
        optimizer.step()  # AdamW accepts the restored state
    assert torch.equal(torch.cat([w for w, _ in pieces]), full["weight"])
    assert torch.equal(torch.cat([m for _, m in pieces]), full["optimizer.exp_avg"])


def test_incomplete_or_foreign_shards_are_one_line_errors(tmp_path: Path) -> None:
    files = []
    for rank, (shard, _) in enumerate(trained_shards(7, 2)):
        files.append(tmp_path / f"rank{rank}.safetensors")
        save_file({k: v.contiguous() for k, v in shard.process_state().items()}, str(files[-1]))
    with pytest.raises(DataError, match=r"stop at class 4 of 7: a process's file is missing"):
        read_rows(files[:1], 0, 7, 7)
    with pytest.raises(DataError, match=r"rank1\.safetensors holds classes \[4, 7\) of 7; expected .* starting at 0"):
        read_rows(files[::-1], 0, 7, 7)
    with pytest.raises(DataError, match=r"of 7; expected a shard of 8 classes"):
        read_rows(files, 0, 8, 8)


# -- two real processes ---------------------------------------------------------------------------------------------


def test_two_processes_equal_one_process_over_the_concatenated_batch(tmp_path: Path) -> None:
    """gloo: each scenario's per-process losses, embedding gradients (as DDP averages them) and shard gradients
    equal the replicated head's over the whole batch; with sampling, over the union of the sampled classes."""
    world = 2
    mp.spawn(workers.equivalence, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    for name, scenario in workers.SCENARIOS.items():
        ranks = [torch.load(tmp_path / f"{name}_rank{r}.pt") for r in range(world)]
        classes = torch.cat([r["classes"] for r in ranks])
        expected = workers.replicated(scenario, classes, world)
        for rank, result in enumerate(ranks):
            torch.testing.assert_close(result["terms"], expected["terms"][rank], msg=f"{name}: loss terms")
        grads = torch.cat([r["embedding_grad"] for r in ranks]) / world  # what DDP's average makes of them
        torch.testing.assert_close(grads, expected["embedding_grad"], msg=f"{name}: embedding gradient")
        centres = torch.cat([r["centre_grad"] for r in ranks])
        torch.testing.assert_close(centres, expected["centre_grad"], msg=f"{name}: centre gradient")
        if scenario.get("sample_rate", 1.0) == 1.0:
            assert classes.tolist() == list(range(workers.CLASSES))
