"""UNPG (docs/losses.md section 4): filter, pairs, the log-sum-exp shortcut against explicit concatenation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from finetune.context import Communicator, LossContext
from finetune.heads import MarginHead, margin_cross_entropy
from finetune.regularisers.unpg import UNPG, UNPGConfig, build_unpg, negative_pairs, tukey_keep, unpg_addon
from lafs.errors import ConfigError
from lafs.registry import REGULARISERS
from lafs.schedules import WeightSchedule


def make_ctx(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    head: MarginHead,
    soft_labels: torch.Tensor | None = None,
    comm: Communicator | None = None,
) -> LossContext:
    """A one-view context as the objective builds it from embeddings (B, d)."""
    return LossContext.from_embeddings(
        head, embeddings, embeddings[None], labels, soft_labels, comm=comm or Communicator()
    )


def explicit_concat_loss(ctx: LossContext, whisker: float = 1.5) -> torch.Tensor:
    """The UNPG code's loss: CE over [class logits | s * S'^n broadcast to every row]."""
    x = F.normalize(ctx.embeddings[0], dim=-1)
    values = negative_pairs(x @ x.t(), ctx.labels)
    values = values[tukey_keep(values, whisker)]
    logits = ctx.logits[0]
    extra = (ctx.head.scale * values)[None].expand(logits.shape[0], -1)
    full = torch.cat([logits, extra], dim=1)
    if ctx.soft_labels is None:
        return F.cross_entropy(full, ctx.labels)
    targets = torch.cat([ctx.soft_labels, torch.zeros_like(extra)], dim=1)
    return -(targets * full.log_softmax(-1)).sum(-1).mean()


def base_loss(ctx: LossContext) -> torch.Tensor:
    """The base margin CE in the context's dtype (margin_cross_entropy rounds float64 to float32)."""
    logits = ctx.logits[0]
    if ctx.soft_labels is None:
        return F.cross_entropy(logits, ctx.labels)
    return -(ctx.soft_labels * logits.log_softmax(-1)).sum(-1).mean()


def random_problem(seed: int = 0, b: int = 8, c: int = 5, d: int = 4, scale: float = 8.0):
    g = torch.Generator().manual_seed(seed)
    head = MarginHead(c, d, scale=scale, margins=(1.0, 0.5, 0.0)).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(c, d, generator=g, dtype=torch.float64))
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (b,), generator=g)
    return head, x, labels


# -- spec 4(g) 1: the Tukey filter ------------------------------------------------------------------------------


def test_filter_hand_example() -> None:
    q = torch.tensor([-0.1, 0.0, 0.05, 0.1, 0.1, 0.15, 0.2, 0.9], dtype=torch.float64)
    keep = tukey_keep(q[torch.randperm(8)], 1.5)
    assert keep.sum() == 7
    kept = tukey_keep(q, 1.5)
    assert kept.tolist() == [True] * 7 + [False]  # 0.9 > 0.2 + 1.5 * 0.15 = 0.425
    assert tukey_keep(q, math.inf).all()


def test_filter_fences_are_index_quartiles() -> None:
    q = [-0.1, 0.0, 0.05, 0.1, 0.1, 0.15, 0.2, 0.9]
    # Replacing an end value keeps Q1 = q[2] = 0.05 and Q3 = q[6] = 0.2, so the fences stay [-0.175, 0.425].
    for index, value, inside in [(0, -0.1749, True), (0, -0.1751, False), (7, 0.4249, True), (7, 0.4251, False)]:
        values = torch.tensor([*q[:index], value, *q[index + 1 :]], dtype=torch.float64)
        assert bool(tukey_keep(values, 1.5)[index]) == inside


def test_filter_degenerate() -> None:
    assert tukey_keep(torch.zeros(0), 1.5).numel() == 0
    same = torch.full((6,), 0.3)
    assert tukey_keep(same, 0.0).all()  # IQR = 0 keeps the equal values
    assert tukey_keep(same, math.inf).all()  # no nan from inf * 0


# -- spec 4(g) 2: pair generation -------------------------------------------------------------------------------


def test_pair_generation_hand_example() -> None:
    x = torch.tensor([[1, 0], [0.6, 0.8], [0, 1], [-0.6, 0.8], [-1, 0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2, 3])
    values = negative_pairs(x @ x.t(), labels)
    assert values.numel() == 9
    expected = sorted([0, -0.6, -1, 0.8, 0.28, -0.6, 0.8, 0, 0.6])
    torch.testing.assert_close(values.sort().values, torch.tensor(expected, dtype=torch.float64))


def test_pairs_skip_unknown_labels() -> None:
    s = torch.ones(3, 3)
    assert negative_pairs(s, torch.tensor([0, 1, -1])).numel() == 1


# -- spec 4(g) 3: L_UNPG >= L_base ------------------------------------------------------------------------------


def test_hand_example_scale_32() -> None:
    head = MarginHead(3, 2, scale=32.0, margins=(1.0, 0.5, 0.0)).double()
    cos = torch.tensor([[0.8, 0.3, -0.1]], dtype=torch.float64)
    labels = torch.tensor([0])
    logits = head.logits(cos, labels)
    base = F.cross_entropy(logits, labels)
    assert base.item() == pytest.approx(0.025378, abs=5e-7)
    aux = torch.tensor([0.05, 0.1], dtype=torch.float64)
    total = base + unpg_addon(torch.logsumexp(logits, -1), aux, head.scale)
    # The spec's 0.025429 is the exact 0.02542845067 rounded up, hence the 1e-6 tolerance.
    assert total.item() == pytest.approx(0.025429, abs=1e-6)
    # At s = 64 the aux logits are negligible (~2e-9).
    head.scale = 64.0
    logits = head.logits(cos, labels)
    assert 0 < unpg_addon(torch.logsumexp(logits, -1), aux, 64.0).item() < 1e-8


def test_never_below_base_and_zero_without_pairs() -> None:
    head, x, labels = random_problem()
    ctx = make_ctx(x, labels, head)
    assert UNPG()(ctx)["unpg_loss"].item() > 0
    one_class = make_ctx(x, torch.zeros_like(labels), head)
    loss = UNPG()(one_class)["unpg_loss"]
    assert loss.item() == 0.0 and loss.dtype == torch.float64


# -- spec 4(g) 4: the target index and accuracy are untouched ---------------------------------------------------


def test_logits_untouched() -> None:
    head, x, labels = random_problem()
    ctx = make_ctx(x, labels, head)
    before = ctx.logits.clone()
    UNPG()(ctx)
    assert torch.equal(ctx.logits, before)  # the add-on never edits the class columns (target index, argmax)


# -- spec 4(g) 5: gradient sign on the pair similarities --------------------------------------------------------


def test_gradient_pushes_kept_negatives_apart() -> None:
    x = torch.tensor([[1, 0], [0.6, 0.8], [0, 1], [-0.6, 0.8], [-1, 0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2, 3])
    similarity = (x @ x.t()).requires_grad_(True)
    values = negative_pairs(similarity, labels)
    keep = tukey_keep(values, 0.0)  # k = 0 drops some pairs, so both cases are exercised
    assert 0 < keep.sum() < values.numel()
    logits = torch.randn(5, 4, dtype=torch.float64)
    unpg_addon(torch.logsumexp(logits, -1), values[keep], 8.0).backward()
    grad = similarity.grad
    rows, cols = torch.triu_indices(5, 5, offset=1)
    different = labels[rows] != labels[cols]
    kept_pairs = set()
    neg_rows, neg_cols = rows[different], cols[different]
    for r, c, k in zip(neg_rows.tolist(), neg_cols.tolist(), keep.tolist(), strict=True):
        if k:
            kept_pairs.add((r, c))
    for i in range(5):
        for j in range(5):
            if (i, j) in kept_pairs:
                assert grad[i, j] > 0
            else:
                assert grad[i, j] == 0  # filtered, same-label, diagonal and lower-triangle entries


# -- spec 4(g) 6: permutation invariance ------------------------------------------------------------------------


def test_batch_permutation_invariance() -> None:
    head, x, labels = random_problem(b=10)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    a = UNPG()(make_ctx(x, labels, head))["unpg_loss"]
    b = UNPG()(make_ctx(x[perm], labels[perm], head))["unpg_loss"]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# -- spec 4(g) 7: the shortcut equals explicit concatenation ----------------------------------------------------


@pytest.mark.parametrize("whisker", [1.5, 0.0, math.inf])
@pytest.mark.parametrize("soft", [False, True])
def test_shortcut_equals_explicit_concatenation(whisker: float, soft: bool) -> None:
    head, x, labels = random_problem(b=12, scale=16.0)
    soft_labels = None
    if soft:
        g = torch.Generator().manual_seed(3)
        soft_labels = torch.softmax(torch.randn(12, 5, generator=g, dtype=torch.float64), dim=-1)
    x.requires_grad_(True)
    ctx = make_ctx(x, labels, head, soft_labels)
    module = UNPG(whisker=whisker, mixed_batches="dominant")
    shortcut = base_loss(ctx) + 1.0 * module(ctx)["unpg_loss"]
    explicit = explicit_concat_loss(ctx, whisker)
    torch.testing.assert_close(shortcut, explicit, rtol=0, atol=1e-12)
    g1 = torch.autograd.grad(shortcut, [x, head.weight], retain_graph=True)
    g2 = torch.autograd.grad(explicit, [x, head.weight])
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # Through the objective's own CE, which rounds to float32: within 1e-6 relative.
    objective = margin_cross_entropy(ctx.logits, labels, soft_labels).double() + module(ctx)["unpg_loss"]
    assert objective.item() == pytest.approx(explicit.item(), rel=1e-6)


# -- finiteness, gradient routing, gradcheck --------------------------------------------------------------------


def test_finite_at_identical_embeddings_and_cos_one() -> None:
    head = MarginHead(3, 4, scale=64.0).double()
    with torch.no_grad():
        head.weight.copy_(torch.eye(3, 4, dtype=torch.float64))
    x = torch.tensor([[1.0, 0, 0, 0]] * 4, dtype=torch.float64, requires_grad=True)  # cos = 1 to class 0
    labels = torch.tensor([0, 1, 2, 1])
    ctx = make_ctx(x, labels, head)
    loss = UNPG()(ctx)["unpg_loss"]
    (grad_x, grad_w) = torch.autograd.grad(loss, [x, head.weight])
    assert torch.isfinite(loss) and torch.isfinite(grad_x).all() and torch.isfinite(grad_w).all()
    zero = torch.zeros(4, 4, dtype=torch.float64, requires_grad=True)  # degenerate encoder output
    loss = UNPG()(make_ctx(zero, labels, head))["unpg_loss"]
    assert torch.isfinite(loss) and torch.isfinite(torch.autograd.grad(loss, zero)[0]).all()


def test_gradient_reaches_encoder_and_head() -> None:
    torch.manual_seed(0)
    encoder = torch.nn.Linear(6, 4)
    head = MarginHead(5, 4, scale=8.0)
    images, labels = torch.randn(8, 6), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    loss = UNPG(whisker=math.inf)(make_ctx(encoder(images), labels, head))["unpg_loss"]
    loss.backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0  # through each row's lse


def test_pair_term_alone_reaches_only_the_encoder() -> None:
    torch.manual_seed(0)
    encoder = torch.nn.Linear(6, 4)
    head = MarginHead(5, 4, scale=8.0)
    x = encoder(torch.randn(8, 6))
    ctx = make_ctx(x, torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]), head)
    ctx.logits = ctx.logits.detach()
    UNPG()(ctx)["unpg_loss"].backward()
    assert encoder.weight.grad.abs().sum() > 0 and head.weight.grad is None


def test_gradcheck() -> None:
    head, x, labels = random_problem(b=4, c=5, d=3, scale=4.0)

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(x, dim=-1) @ F.normalize(w, dim=-1).t()
        logits = head.logits(cos[None], labels)
        ctx = LossContext(features=x, embeddings=x[None], labels=labels, cosines=cos[None], logits=logits, head=head)
        return UNPG(whisker=math.inf)(ctx)["unpg_loss"]

    w = head.weight.detach().clone()
    assert torch.autograd.gradcheck(fn, (x.clone().requires_grad_(True), w.requires_grad_(True)))


# -- mixed batches, gather --------------------------------------------------------------------------------------


def test_mixed_batches_skip_or_dominant() -> None:
    head, x, labels = random_problem()
    soft = F.one_hot(labels, 5).double()
    ctx = make_ctx(x, labels, head, soft_labels=soft)
    assert UNPG(mixed_batches="skip")(ctx)["unpg_loss"].item() == 0.0
    dominant = UNPG(mixed_batches="dominant")(ctx)["unpg_loss"]
    torch.testing.assert_close(dominant, UNPG()(make_ctx(x, labels, head))["unpg_loss"])


def test_gather_uses_every_process_pairs() -> None:
    head, x, labels = random_problem(b=12)
    local = slice(4, 8)
    xn = F.normalize(x, dim=-1)
    # A fake three-process all-gather: this process is the middle chunk.
    comm = Communicator(
        rank=1,
        gather=lambda t: torch.cat([labels[:4], t, labels[8:]]),
        gather_with_grad=lambda t: torch.cat([xn[:4], t, xn[8:]]),
    )
    x_local = x[local].clone().requires_grad_(True)
    ctx = make_ctx(x_local, labels[local], head, comm=comm)
    loss = UNPG(gather=True)(ctx)["unpg_loss"]
    values = negative_pairs(xn @ xn.t(), labels)
    values = values[tukey_keep(values, 1.5)]
    torch.testing.assert_close(loss, unpg_addon(ctx.log_partition()[0], values, head.scale))
    bad = Communicator(gather_with_grad=lambda t: t + 1)
    with pytest.raises(ConfigError):
        UNPG(gather=True)(make_ctx(x[:4], labels[:4], head, comm=bad))


# Each rank: UNPG with gather=True over its chunk of one batch, on 2 real gloo processes; it saves its chunk's
# gradient. Spawned children import this small module, not the test module.
GATHER_WORKER = """
from datetime import timedelta

import torch
import torch.distributed as dist


def run(rank, world, init_file, out_dir, x, labels, weight, scale):
    dist.init_process_group(
        "gloo", init_method="file://" + init_file, rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        from finetune.context import Communicator, LossContext, differentiable_gather
        from finetune.heads import MarginHead
        from finetune.regularisers.unpg import UNPG

        def gather(t):
            out = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(out, t)
            return torch.cat(out)

        head = MarginHead(weight.shape[0], weight.shape[1], scale=scale, margins=(1.0, 0.5, 0.0)).double()
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(weight))
        b = x.shape[0] // world
        chunk = torch.from_numpy(x[rank * b : (rank + 1) * b]).requires_grad_(True)
        comm = Communicator(is_main=rank == 0, rank=rank, gather=gather, gather_with_grad=differentiable_gather)
        ctx = LossContext.from_embeddings(
            head, chunk, chunk[None], torch.from_numpy(labels[rank * b : (rank + 1) * b]), None, comm=comm
        )
        UNPG(gather=True)(ctx)["unpg_loss"].backward()
        torch.save(chunk.grad, f"{out_dir}/grad{rank}.pt")
    finally:
        dist.destroy_process_group()
"""


def test_gathered_gradient_equals_the_single_process_gradient(tmp_path, monkeypatch) -> None:
    # DDP averages the ranks' gradients: with the detached gather of before, the pair term's gradient came out at
    # 1 / world of the true one (0.50 on 2 processes).
    import importlib

    world = 2
    head, x, labels = random_problem(b=8)
    full = x.clone().requires_grad_(True)
    UNPG()(make_ctx(full, labels, head))["unpg_loss"].backward()
    (tmp_path / "unpg_gather_worker.py").write_text(GATHER_WORKER)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned children inherit sys.path
    worker = importlib.import_module("unpg_gather_worker")
    args = (world, str(tmp_path / "init"), str(tmp_path), x.numpy(), labels.numpy(), head.weight.detach().numpy())
    mp.spawn(worker.run, args=(*args, head.scale), nprocs=world, join=True)
    per_rank = torch.cat([torch.load(tmp_path / f"grad{rank}.pt") for rank in range(world)])
    torch.testing.assert_close(per_rank / world, full.grad)  # what DDP's average makes of it


# -- config and registry ----------------------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    cfg = UNPGConfig()
    assert cfg.weight == WeightSchedule(kind="constant", value=1.0)
    assert (cfg.whisker, cfg.gather, cfg.mixed_batches, cfg.enabled) == (1.5, False, "skip", False)
    cfg.validate()
    for bad in [UNPGConfig(whisker=-1.0), UNPGConfig(whisker=math.nan), UNPGConfig(mixed_batches="drop")]:
        with pytest.raises(ConfigError):
            bad.validate()
    module = REGULARISERS.get("unpg")(cfg, num_classes=5, embed_dim=4, num_samples=100)
    assert isinstance(module, UNPG) and build_unpg is REGULARISERS.get("unpg")
    assert list(module.state_dict()) == []
