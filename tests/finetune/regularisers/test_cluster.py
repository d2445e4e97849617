"""Cluster-guided margins, SCC and alignment (finetune.regularisers.cluster); spec-by-us, docs/losses.md section 2."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from finetune.context import Communicator, LossContext
from finetune.heads import MarginHead, margin_cross_entropy
from finetune.regularisers.cluster import (
    ClusterConfig,
    ClusterGuided,
    build_cluster,
    cluster_margins,
    cluster_tables,
    knn_clusters,
    scc_loss,
)
from lafs.errors import ConfigError
from lafs.registry import REGULARISERS

D = 16


def planted(groups: int = 4, per: int = 12, dim: int = D, noise: float = 0.1, seed: int = 0):
    """Unit features (groups * per, dim) around orthogonal directions, labels = group; and the directions."""
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0][:, :groups].t()
    labels = torch.arange(groups).repeat_interleave(per)
    x = F.normalize(dirs[labels] + noise * torch.randn(groups * per, dim, generator=gen), dim=1)
    return x, labels, dirs


def make_ctx(
    head: MarginHead,
    features: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    epoch: float = 0.0,
    comm: Communicator | None = None,
    soft_labels: torch.Tensor | None = None,
) -> LossContext:
    return LossContext.from_embeddings(
        head, features, features[None], labels, soft_labels, epoch=epoch, indices=indices, comm=comm or Communicator()
    )


def clustered_module(cfg: ClusterConfig | None = None, seed: int = 0) -> tuple[ClusterGuided, MarginHead, tuple]:
    """A module whose bank holds the planted data (filled in epoch 0) and that clustered once at epoch 1."""
    cfg = cfg or ClusterConfig(knn=5, bank_dtype="float32")
    x, y, dirs = planted(seed=seed)
    module = build_cluster(cfg, num_classes=4, embed_dim=D, num_samples=x.shape[0])
    head = MarginHead(4, D, margins=(1.0, cfg.base_margin, 0.0))
    index = torch.arange(x.shape[0])
    for part in index.chunk(4):
        module.update(make_ctx(head, x[part], y[part], part, epoch=0.5))
    assert int(module.last_clustered_epoch) == -1  # round 0 only fills the bank
    module.update(make_ctx(head, x[:4], y[:4], index[:4], epoch=1.0))
    assert float(module.last_clustered_epoch) == 1.0
    return module, head, (x, y, dirs)


# ---- spec 2(g) 1: alpha = 0 is exactly ArcFace(m0)


@pytest.mark.parametrize("clustered", [False, True])
def test_alpha_zero_is_arcface(clustered: bool) -> None:
    cfg = ClusterConfig(alpha=0.0, base_margin=0.45, knn=5, bank_dtype="float32")
    if clustered:
        module, _, (x, y, _) = clustered_module(cfg)
    else:
        module = build_cluster(cfg, num_classes=4, embed_dim=D, num_samples=8)
        x, y, _ = planted()
    torch.manual_seed(1)
    plain = MarginHead(4, D, margins=(1.0, 0.45, 0.0))
    emb = torch.randn(1, x.shape[0], D)
    cos = plain.cosines(emb)
    ours = plain.logits(cos, y, class_margins=module.class_margins())
    assert torch.equal(ours, plain.logits(cos, y))
    assert torch.equal(margin_cross_entropy(ours, y, None), margin_cross_entropy(plain.logits(cos, y), y, None))
    soft = F.one_hot(y, 4).float() * 0.7 + 0.075
    soft_ours = plain.logits(cos, y, soft, class_margins=module.class_margins())
    assert torch.equal(soft_ours, plain.logits(cos, y, soft))


# ---- spec 2(g) 2: equal hardness -> m0


def test_equal_hardness_gives_base_margin() -> None:
    h = torch.full((7,), 0.3)
    assert torch.equal(cluster_margins(h, 0.5, 0.1, 0.35, 0.65), torch.full((7,), 0.5, dtype=torch.float64))
    module, _, _ = clustered_module(ClusterConfig(alpha=0.3, knn=5, bank_dtype="float32"))
    assert torch.equal(module.hardness, torch.zeros(4, dtype=torch.float64))  # planted clusters are pure
    assert torch.equal(module.class_margins(), torch.full((4,), 0.5, dtype=torch.float64))


def test_unseen_classes_keep_base_margin() -> None:
    h = torch.tensor([0.0, math.nan, 1.0])
    m = cluster_margins(h, 0.5, 0.1, 0.35, 0.65)
    assert m.tolist() == pytest.approx([0.45, 0.5, 0.55])


# ---- spec 2(g) 3: SCC hand value


def test_scc_hand_value() -> None:
    centres = torch.eye(2, dtype=torch.float64)
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    loss = scc_loss(x, centres, torch.tensor([0]), torch.tensor([True, True]), 0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-10.0)), rel=1e-12)
    assert loss.item() == pytest.approx(4.54e-5, rel=1e-3)
    # An invalid row leaves the denominator: only the positive remains and the loss is 0.
    only = scc_loss(x, centres, torch.tensor([0]), torch.tensor([True, False]), 0.1)
    assert only.item() == pytest.approx(0.0, abs=1e-12)


# ---- spec 2(g) 4: alignment zero iff aligned, gradient only into W


def test_alignment_zero_when_aligned_and_gradient_only_into_w() -> None:
    module, head, (x, y, _) = clustered_module()
    assert (module.align_label == torch.arange(4)).all()
    with torch.no_grad():
        head.weight.copy_(3.0 * module.centres)  # W_l(k) parallel to c_k
    feats = x[:8].clone().requires_grad_(True)
    terms = module(make_ctx(head, feats, y[:8], torch.arange(8), epoch=1.5))
    assert terms["align_loss"].item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        head.weight.add_(0.5 * torch.randn_like(head.weight))
    terms = module(make_ctx(head, feats, y[:8], torch.arange(8), epoch=1.5))
    assert terms["align_loss"].item() > 1e-3
    terms["align_loss"].backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert feats.grad is None  # alignment does not touch the features
    for name, buf in module.named_buffers():
        assert not buf.requires_grad and buf.grad is None, name
    terms["scc_loss"].backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()
    assert module.centres.grad is None


# ---- spec 2(g) 5: margins monotone in hardness


def test_margins_monotone_in_hardness() -> None:
    h = torch.rand(50, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    m = cluster_margins(h, 0.5, 0.3, 0.35, 0.65)
    order = torch.argsort(h)
    assert (m[order].diff() >= 0).all()
    inside = (m > 0.35) & (m < 0.65)
    assert (m[order][inside[order]].diff() > 0).all()  # strictly increasing where not clipped
    assert m.min() >= 0.35 and m.max() <= 0.65


def test_purity_hand_value() -> None:
    # Class 0 has 4 samples, one inside class 1's cluster: h_0 = 1/4, h_1 = 0.
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 0])
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    x = F.normalize(torch.randn(7, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    t = cluster_tables(x, labels, ids, 3, "purity", 0.5, 0.1, (0.35, 0.65))
    assert t.num_clusters == 2
    assert t.hardness[:2].tolist() == [0.25, 0.0] and math.isnan(t.hardness[2])
    assert t.margins.tolist() == pytest.approx([0.5125, 0.4875, 0.5])
    assert t.positive_row.tolist() == [0, 1, -1]
    assert t.centre_valid.tolist() == [True, True, False]
    assert t.align_label.tolist() == [0, 1, -1]
    expected = F.normalize(x[3:7].double().sum(0), dim=0).float()
    torch.testing.assert_close(t.centres[1], expected)


def test_shared_main_cluster_is_one_centre() -> None:
    # Classes 0 and 1 both live in cluster 0 (majority 0): one denominator row, both point at it; class 1's W is
    # not aligned (the cluster is class 0's).
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    ids = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    x = F.normalize(torch.randn(7, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    t = cluster_tables(x, labels, ids, 3)
    assert t.positive_row.tolist() == [0, 0, 2]
    assert t.centre_valid.tolist() == [True, False, True]
    assert t.align_label.tolist() == [0, -1, 2]
    assert t.hardness.tolist() == [0.0, 1.0, 0.0]  # class 1 sits entirely in a cluster dominated by 0


def test_dispersion_hardness() -> None:
    gen = torch.Generator().manual_seed(0)
    dirs = torch.eye(3)[:2]
    labels = torch.arange(2).repeat_interleave(10)
    spread = torch.tensor([0.05, 0.4]).repeat_interleave(10)[:, None]
    x = F.normalize(dirs[labels] + spread * torch.randn(20, 3, generator=gen), dim=1)
    t = cluster_tables(x, labels, labels.clone(), 2, "dispersion")
    assert t.hardness[1] == 1.0 and 0 < t.hardness[0] < 0.5  # the spread class is the hard one
    assert t.margins[1] > 0.5 > t.margins[0]


# ---- spec 2(g) 6: deterministic re-clustering; recovery of planted clusters


def test_reclustering_is_deterministic() -> None:
    module, _, _ = clustered_module(ClusterConfig(knn=5, bank_dtype="float16", hardness="dispersion"))
    a, b = module.cluster_bank(), module.cluster_bank()
    for name in ("centres", "centre_valid", "positive_row", "align_label", "hardness", "margins"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, equal_nan=True)
    assert a.num_clusters == b.num_clusters


def test_knn_clustering_recovers_planted_groups() -> None:
    x, y, _ = planted(groups=4, per=25, noise=0.15)
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(5))
    x, y = x[perm], y[perm]
    ids = knn_clusters(x, knn=5, threshold=0.5, min_cluster_size=2, query_block=7, key_block=13)  # tiny blocks
    assert ids.unique().numel() == 4 and (ids >= 0).all()
    for g in range(4):
        assert ids[y == g].unique().numel() == 1  # one cluster per group, and groups never share one
    t = cluster_tables(x, y, ids, 4)
    assert torch.equal(t.hardness, torch.zeros(4, dtype=torch.float64))  # purity 1 everywhere
    assert t.centre_valid.all() and (t.align_label == torch.arange(4)).all()
    # Blocking must not change the graph.
    assert torch.equal(ids, knn_clusters(x, knn=5, threshold=0.5, min_cluster_size=2))


def test_knn_noise_and_mutual() -> None:
    x, _, _ = planted(groups=2, per=6)
    outlier = F.normalize(torch.ones(1, D), dim=1)
    ids = knn_clusters(torch.cat([x, outlier]), knn=3, threshold=0.5, min_cluster_size=2)
    assert ids[-1] == -1 and (ids[:-1] >= 0).all()
    mutual = knn_clusters(torch.cat([x, outlier]), knn=3, threshold=0.5, min_cluster_size=2, mutual=True)
    assert mutual[-1] == -1
    assert knn_clusters(x[:1], knn=3, threshold=0.5).tolist() == [0]  # a lone sample is its own cluster


# ---- bank, schedule, processes, checkpoints


def test_update_with_two_fake_processes_fills_bank() -> None:
    comm = Communicator(is_main=False, gather=lambda t: torch.cat([t, t]), broadcast=lambda t: t)
    cfg = ClusterConfig(bank_dtype="float32")
    module = build_cluster(cfg, num_classes=3, embed_dim=4, num_samples=10)
    head = MarginHead(3, 4)
    feats = torch.randn(3, 4)
    module.update(make_ctx(head, feats, torch.tensor([2, 0, 1]), torch.tensor([7, 1, 4]), comm=comm))
    assert module.bank_filled.nonzero().squeeze(1).tolist() == [1, 4, 7]
    torch.testing.assert_close(module.bank[[7, 1, 4]], F.normalize(feats, dim=1))
    assert module.bank_labels.tolist() == [-1, 0, -1, -1, 1, -1, -1, 2, -1, -1]
    assert module.bank[0].abs().sum() == 0
    # A mixed batch is gathered too (collectives stay in step) but does not enter the bank by default.
    soft = F.one_hot(torch.tensor([0, 1]), 3).float()
    module.update(
        make_ctx(head, torch.randn(2, 4), torch.tensor([0, 1]), torch.tensor([0, 2]), comm=comm, soft_labels=soft)
    )
    assert not module.bank_filled[[0, 2]].any()
    mixed_in = build_cluster(ClusterConfig(bank_mixed=True), num_classes=3, embed_dim=4, num_samples=10)
    mixed_in.update(make_ctx(head, torch.randn(2, 4), torch.tensor([0, 1]), torch.tensor([0, 2]), soft_labels=soft))
    assert mixed_in.bank_filled[[0, 2]].all() and mixed_in.bank.dtype == torch.float16


def test_duplicate_indices_keep_last() -> None:
    module = build_cluster(ClusterConfig(bank_dtype="float32"), num_classes=2, embed_dim=2, num_samples=4)
    head = MarginHead(2, 2)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    module.update(make_ctx(head, feats, torch.tensor([0, 1, 1]), torch.tensor([3, 3, 0])))
    torch.testing.assert_close(module.bank[3], torch.tensor([0.0, 1.0]))
    assert module.bank_labels[3] == 1


def test_broadcast_tables_reach_other_processes() -> None:
    main, head, (x, y, _) = clustered_module()
    # A non-main process never clusters; each broadcast hands it the main process's table, in order.
    names = ("margins", "hardness", "centres", "centre_valid", "positive_row", "align_label", "num_clusters")
    payload = iter([getattr(main, n).clone() for n in names])
    other = build_cluster(main.cfg, num_classes=4, embed_dim=D, num_samples=x.shape[0])
    for name in ("bank", "bank_filled", "bank_labels"):  # identical banks: every process wrote every step
        getattr(other, name).copy_(getattr(main, name))
    other.cluster_bank = None  # type: ignore[assignment]  # calling it off the main process would fail

    def broadcast(t: torch.Tensor) -> torch.Tensor:
        sent = next(payload)
        assert t.shape == sent.shape  # fixed shapes on every process
        return sent.to(t.dtype)

    comm = Communicator(is_main=False, broadcast=broadcast)
    other.update(make_ctx(head, x[:4], y[:4], torch.arange(4), epoch=1.0, comm=comm))
    for name in names:
        assert torch.equal(getattr(other, name), getattr(main, name)), name
    assert other._last_epoch == 1.0 and next(payload, None) is None


def test_recluster_schedule() -> None:
    cfg = ClusterConfig(knn=3, min_fill=0.5, recluster_every_epochs=1.0)
    x, y, _ = planted(groups=2, per=5)
    module = build_cluster(cfg, num_classes=2, embed_dim=D, num_samples=10)
    head = MarginHead(2, D)
    calls: list[float] = []
    original = module.cluster_bank

    def counting():
        calls.append(1.0)
        return original()

    module.cluster_bank = counting  # type: ignore[method-assign]
    module.update(make_ctx(head, x[:3], y[:3], torch.arange(3), epoch=1.0))  # 30% filled: postponed
    assert calls == []
    module.update(make_ctx(head, x[3:6], y[3:6], torch.arange(3, 6), epoch=1.2))  # 60%: clusters now
    assert len(calls) == 1 and float(module.last_clustered_epoch) == 1.2
    module.update(make_ctx(head, x[6:], y[6:], torch.arange(6, 10), epoch=1.9))
    assert len(calls) == 1
    module.update(make_ctx(head, x[:2], y[:2], torch.arange(2), epoch=2.0))
    assert len(calls) == 2


def test_state_dict_round_trip_gives_identical_next_step() -> None:
    module, head, (x, y, _) = clustered_module()
    fresh = build_cluster(module.cfg, num_classes=4, embed_dim=D, num_samples=x.shape[0])
    wrapper = torch.nn.ModuleDict({"reg": fresh})  # loaded as a submodule, as inside a checkpointed objective
    wrapper.load_state_dict({f"reg.{k}": v for k, v in module.state_dict().items()})
    assert fresh._last_epoch == 1.0
    ctx = make_ctx(head, x[::3], y[::3], torch.arange(0, x.shape[0], 3), epoch=1.5)
    a, b = module(ctx), fresh(ctx)
    for name in ("scc_loss", "align_loss"):
        assert torch.equal(a[name], b[name]) and a[name] > 0
    assert torch.equal(module.class_margins(), fresh.class_margins())
    # Same epoch bookkeeping: neither re-clusters within epoch 1.
    fresh.update(ctx)
    module.update(ctx)
    assert torch.equal(module.centres, fresh.centres) and float(fresh.last_clustered_epoch) == 1.0


# ---- numerics


def test_zero_terms_before_clustering() -> None:
    module = build_cluster(ClusterConfig(), num_classes=5, embed_dim=D, num_samples=20)
    head = MarginHead(5, D)
    feats = torch.randn(4, D, requires_grad=True)
    terms = module(make_ctx(head, feats, torch.tensor([0, 1, 2, 3]), torch.arange(4)))
    assert set(terms) == {"scc_loss", "align_loss"}
    assert all(v.item() == 0.0 for v in terms.values())
    sum(terms.values()).backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()
    assert torch.equal(module.class_margins(), torch.full((5,), 0.5, dtype=torch.float64))


def test_finite_at_identical_embeddings() -> None:
    cfg = ClusterConfig(knn=3, hardness="dispersion", bank_dtype="float32")
    module = build_cluster(cfg, num_classes=3, embed_dim=D, num_samples=9)
    head = MarginHead(3, D)
    same = torch.ones(9, D)
    labels = torch.arange(3).repeat_interleave(3)
    module.update(make_ctx(head, same, labels, torch.arange(9), epoch=0.5))
    module.update(make_ctx(head, same[:1], labels[:1], torch.arange(1), epoch=1.0))
    assert int(module.num_clusters) == 1
    assert torch.isfinite(module.margins).all() and torch.isfinite(module.centres).all()
    feats = same[:3].clone().requires_grad_(True)
    terms = module(make_ctx(head, feats, labels[:3], torch.arange(3), epoch=1.5))
    total = sum(terms.values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(feats.grad).all() and torch.isfinite(head.weight.grad).all()


def test_unlabelled_rows_are_left_out() -> None:
    module, head, (x, y, _) = clustered_module()
    labels = y[:4].clone()
    labels[0] = -1  # Partial-FC's "no positive here" must not index the last class
    full = module(make_ctx(head, x[1:4], y[1:4], torch.arange(1, 4), epoch=1.5))["scc_loss"]
    part = module(make_ctx(head, x[:4], labels, torch.arange(4), epoch=1.5))["scc_loss"]
    torch.testing.assert_close(full, part)


# ---- config and registry


def test_config_validation() -> None:
    ClusterConfig().validate()
    bad = [
        {"margin_min": 0.6},
        {"alpha": -0.1},
        {"hardness": "entropy"},
        {"temperature": 0.0},
        {"scc_weight": -1.0},
        {"recluster_every_epochs": 0.0},
        {"min_fill": 0.0},
        {"knn": 0},
        {"threshold": 1.5},
        {"bank_dtype": "bfloat16"},
        {"query_block": 0},
    ]
    for fields in bad:
        with pytest.raises(ConfigError):
            ClusterConfig(**fields).validate()  # type: ignore[arg-type]


def test_registered_builder() -> None:
    assert REGULARISERS.get("cluster") is build_cluster
    module = REGULARISERS.get("cluster")(ClusterConfig(), num_classes=3, embed_dim=4, num_samples=5)
    assert isinstance(module, ClusterGuided) and module.requires == frozenset({"indices"})
    assert module.bank.shape == (5, 4) and module.bank.dtype == torch.float16
    assert ClusterConfig().weight(0.9) == 0.0 and ClusterConfig().weight(1.0) == 0.1
