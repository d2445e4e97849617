"""Cluster-guided margins, supervised contrastive clustering (SCC) and cluster alignment (arXiv 2312.04029).

**Reconstruction [INFER].** No code of the paper exists and only its abstract was read (docs/losses.md
section 2). The abstract names three parts: a cluster-guided angular margin set by how hard each face cluster is,
a supervised contrastive clustering loss pulling features to cluster centres, and a cluster-aligning step between
cluster centres and the classifier's class centres. Every formula, default and choice below is ours:

- State: a memory bank of L2-normalised features over the whole training set (index -> feature, label). Every
  ``recluster_every_epochs`` it is clustered: a k-NN graph (cosine >= ``threshold``) whose connected components
  are the clusters; components smaller than ``min_cluster_size`` are noise. Centres ``c_k = normalise(mean x)``;
  ``l(k)`` is the cluster's majority label; a class's *main cluster* holds most of its samples.
- Hardness ``h_y`` in [0, 1]: ``purity`` (fraction of y's samples outside clusters dominated by y, noise
  included) or ``dispersion`` (mean ``1 - x.c`` to y's main centre, divided by its maximum over classes).
- Margin ``m_y = clip(m0 + alpha * (h_y - mean h), m_min, m_max)``: harder -> larger margin (our choice, on the
  AdaFace/CurricularFace intuition; the paper may do otherwise). It replaces the head's ArcFace m2 per class.
- SCC: ``-log softmax_r(x.c_r / tau)`` at the sample's class's main-cluster centre, over the *distinct* main
  cluster centres (a cluster that is the main cluster of several classes appears once). Centres are detached.
- Alignment: ``mean (1 - W_l(k).c_k)`` over the clusters k that are the main cluster of their own majority label
  (so each class centre is pulled to at most one cluster centre); gradient into W only.

Before the first clustering the margins are m0 everywhere (so ``alpha = 0`` is exactly ArcFace(m0)) and both loss
terms are 0. All tables are fixed-shape buffers, so checkpoints hold the whole state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from finetune.context import Communicator, LossContext
from finetune.regularisers.base import Regulariser, RegulariserConfig
from lafs.errors import ConfigError
from lafs.registry import REGULARISERS
from lafs.schedules import LAFS_FINETUNE_EPOCHS, WeightSchedule

Hardness = Literal["purity", "dispersion"]
BankDtype = Literal["float16", "float32"]

# Buffers recomputed on the main process at each clustering and broadcast to the others.
_TABLES = ("margins", "hardness", "centres", "centre_valid", "positive_row", "align_label", "num_clusters")


def _default_weight() -> WeightSchedule:
    # Spec 2(d): start SCC after 1-2 epochs. The bank needs one epoch to fill, so the first clustering (and with it
    # non-zero terms) arrives at epoch 1 anyway; 0.1 is the low end of lambda_scc because the method is our guess.
    return WeightSchedule(kind="start_at", value=0.1, start_epoch=1.0)


@dataclass
class ClusterConfig(RegulariserConfig):
    # The paper's length is unknown (only its abstract was read): the start at epoch 1 is read against LAFS
    # fine-tuning's 34. (recluster_every_epochs is not stretched: it counts passes over the data, which refill the
    # bank, not a share of the recipe.)
    recipe_epochs: ClassVar[float] = LAFS_FINETUNE_EPOCHS
    weight: WeightSchedule = field(default_factory=_default_weight)  # lambda(t) on scc + align (see above)
    base_margin: float = 0.5  # m0: ArcFace's m2, the margin of every class before clustering / at mean hardness
    alpha: float = 0.1  # margin change per unit of (hardness - mean hardness); 0 gives plain ArcFace(m0)
    margin_min: float = 0.35  # lower clip of m_y, so easy classes keep a real margin
    margin_max: float = 0.65  # upper clip of m_y, so theta + m stays far from the pi guard
    hardness: Hardness = "purity"  # purity needs no scale; dispersion is the continuous alternative
    temperature: float = 0.1  # tau of the SCC softmax (spec 2(d)); 1/tau plays the role of the scale s
    scc_weight: float = 1.0  # weight of scc_loss inside the term dict (lambda(t) multiplies both terms)
    align_weight: float = 1.0  # weight of align_loss inside the term dict
    recluster_every_epochs: float = 1.0  # spec 2(d): once per epoch; fractional values recluster within an epoch
    min_fill: float = 0.5  # fraction of the bank that must hold a feature before clustering (classes absent -> m0)
    knn: int = 10  # neighbours per sample in the clustering graph: enough to connect a class, few to stay cheap
    threshold: float = 0.5  # cosine an edge needs; same-identity face features sit above it, others far below
    mutual_knn: bool = False  # True keeps only mutual neighbours: fewer chains between classes, more fragments
    min_cluster_size: int = 2  # smaller components are noise (singletons say nothing about a class's structure)
    bank_dtype: BankDtype = "float16"  # fp16 halves the bank (unit vectors need no more precision to cluster)
    bank_mixed: bool = False  # mixup images are not clean samples of their index, so by default they skip the bank
    query_block: int = 4096  # rows of the k-NN similarity block: memory is query_block * key_block floats
    key_block: int = 65536  # columns of the k-NN similarity block

    def validate(self) -> None:
        self.weight.validate()
        if not 0 <= self.margin_min <= self.base_margin <= self.margin_max < math.pi:
            raise ConfigError(
                f"cluster: need 0 <= margin_min <= base_margin <= margin_max < pi, got "
                f"{self.margin_min}, {self.base_margin}, {self.margin_max}"
            )
        if self.alpha < 0:
            raise ConfigError(f"cluster.alpha must be >= 0, got {self.alpha}")
        if self.hardness not in ("purity", "dispersion"):
            raise ConfigError(f"cluster.hardness must be purity or dispersion, got {self.hardness!r}")
        if self.temperature <= 0:
            raise ConfigError(f"cluster.temperature must be > 0, got {self.temperature}")
        if self.scc_weight < 0 or self.align_weight < 0:
            raise ConfigError("cluster.scc_weight and cluster.align_weight must be >= 0")
        if self.recluster_every_epochs <= 0:
            raise ConfigError(f"cluster.recluster_every_epochs must be > 0, got {self.recluster_every_epochs}")
        if not 0 < self.min_fill <= 1:
            raise ConfigError(f"cluster.min_fill must lie in (0, 1], got {self.min_fill}")
        if self.knn < 1 or self.min_cluster_size < 1:
            raise ConfigError("cluster.knn and cluster.min_cluster_size must be >= 1")
        if not -1 <= self.threshold <= 1:
            raise ConfigError(f"cluster.threshold is a cosine and must lie in [-1, 1], got {self.threshold}")
        if self.bank_dtype not in ("float16", "float32"):
            raise ConfigError(f"cluster.bank_dtype must be float16 or float32, got {self.bank_dtype!r}")
        if self.query_block < 1 or self.key_block < 1:
            raise ConfigError("cluster.query_block and cluster.key_block must be >= 1")


# ----------------------------------------------------------------------------------------------------------------
# Pure functions (the module below only stores and schedules their results)


def knn_clusters(
    features: torch.Tensor,
    knn: int,
    threshold: float,
    min_cluster_size: int = 1,
    mutual: bool = False,
    query_block: int = 4096,
    key_block: int = 65536,
) -> torch.Tensor:
    """Cluster ids (n,) int64 of unit features (n, d); -1 marks noise (components below ``min_cluster_size``).

    Graph: each sample's ``knn`` most similar others, kept when the cosine is >= ``threshold``; clusters are its
    weakly connected components. Similarities are computed block by block with a running top-k, so memory is
    ``query_block * key_block`` whatever n is. Ids are numbered by their lowest member index (deterministic).
    """
    n = features.shape[0]
    k = min(knn, n - 1)
    if n == 0:
        return torch.empty(0, dtype=torch.int64)
    if k > 0:
        # fp16 matmuls are fast on GPUs but slow or missing on CPUs.
        x = features if features.is_cuda else features.float()
        nbr_sim = torch.empty(n, k, dtype=torch.float32, device=x.device)
        nbr_idx = torch.empty(n, k, dtype=torch.int64, device=x.device)
        for q0 in range(0, n, query_block):
            q = x[q0 : q0 + query_block]
            rows = torch.arange(q0, q0 + q.shape[0], device=x.device)
            best_s = torch.full((q.shape[0], k), -math.inf, device=x.device)
            best_i = torch.full((q.shape[0], k), -1, dtype=torch.int64, device=x.device)
            for k0 in range(0, n, key_block):
                keys = torch.arange(k0, min(k0 + key_block, n), device=x.device)
                sim = (q @ x[k0 : k0 + key_block].t()).float()
                sim.masked_fill_(rows[:, None] == keys[None, :], -math.inf)  # a sample is not its own neighbour
                cand_s = torch.cat([best_s, sim], dim=1)
                cand_i = torch.cat([best_i, keys.expand(q.shape[0], -1)], dim=1)
                top = cand_s.topk(k, dim=1)
                best_s, best_i = top.values, cand_i.gather(1, top.indices)
            nbr_sim[q0 : q0 + q.shape[0]], nbr_idx[q0 : q0 + q.shape[0]] = best_s, best_i
        edge = (nbr_sim >= threshold).reshape(-1).cpu().numpy()
        src = np.repeat(np.arange(n, dtype=np.int64), k)[edge]
        dst = nbr_idx.reshape(-1).cpu().numpy()[edge]
    else:
        src = dst = np.empty(0, dtype=np.int64)
    graph = coo_matrix((np.ones(src.shape[0], dtype=np.int8), (src, dst)), shape=(n, n)).tocsr()
    if mutual:
        graph = graph.multiply(graph.T).tocsr()  # an edge survives only if both ends chose each other
    _, comp = connected_components(graph, directed=True, connection="weak")
    comp = torch.from_numpy(comp.astype(np.int64))
    sizes = torch.bincount(comp)
    comp = torch.where(sizes[comp] >= min_cluster_size, comp, -1)
    ids = torch.full_like(comp, -1)
    kept = comp >= 0
    # scipy numbers components by lowest member already; renumbering keeps that order and closes the gaps.
    ids[kept] = torch.unique(comp[kept], return_inverse=True)[1]
    return ids


def cluster_margins(hardness: torch.Tensor, base: float, alpha: float, low: float, high: float) -> torch.Tensor:
    """Per-class margins (C,) float64 from hardness (C,) in [0, 1]; NaN (class never seen) gets ``base``."""
    h = hardness.double()
    seen = ~torch.isnan(h)
    margins = torch.full_like(h, base)
    if seen.any():
        hs = h[seen]
        # Exact zeros when every class is equally hard, whatever the mean's round-off.
        centred = torch.zeros_like(hs) if bool(hs.max() == hs.min()) else hs - hs.mean()
        margins[seen] = (base + alpha * centred).clamp(low, high)
    return margins


@dataclass
class ClusterTables:
    """Per-class tables of one clustering; C rows each (see `ClusterGuided` for their meaning)."""

    centres: torch.Tensor  # (C, d) float32 unit centres; row r holds the main cluster of class r when centre_valid
    centre_valid: torch.Tensor  # (C,) bool: row r is a distinct main-cluster centre (in the SCC denominator)
    positive_row: torch.Tensor  # (C,) int64: the row of class y's main-cluster centre, -1 when y has none
    align_label: torch.Tensor  # (C,) int64: the class whose W row is aligned with centre row r, -1 for none
    hardness: torch.Tensor  # (C,) float64 in [0, 1], NaN for classes absent from the bank
    margins: torch.Tensor  # (C,) float64
    num_clusters: int


def cluster_tables(
    features: torch.Tensor,
    labels: torch.Tensor,
    ids: torch.Tensor,
    num_classes: int,
    hardness: Hardness = "purity",
    base_margin: float = 0.5,
    alpha: float = 0.1,
    margin_range: tuple[float, float] = (0.35, 0.65),
    block: int = 65536,
) -> ClusterTables:
    """Tables from unit features (n, d), labels (n,) and cluster ids (n,) (-1 noise), computed on the CPU.

    The CPU keeps the sums in a fixed order, so the result is bit-identical for a fixed bank. Ties (equal counts)
    go to the smaller cluster id / class index.
    """
    labels, ids = labels.cpu().long(), ids.cpu().long()
    c, d = num_classes, features.shape[1]
    member = ids >= 0
    k = int(ids.max()) + 1 if bool(member.any()) else 0
    main = torch.full((c,), -1, dtype=torch.int64)  # class -> main cluster
    major = torch.full((max(k, 1),), -1, dtype=torch.int64)  # cluster -> majority label
    if k > 0:
        pair, count = torch.unique(labels[member] * k + ids[member], return_counts=True)
        py, pk = pair // k, pair % k
        best_c = torch.zeros(c, dtype=count.dtype).scatter_reduce(0, py, count, "amax")
        win = count == best_c[py]
        main = torch.full((c,), k, dtype=torch.int64).scatter_reduce(0, py[win], pk[win], "amin")
        main[main == k] = -1
        best_k = torch.zeros(k, dtype=count.dtype).scatter_reduce(0, pk, count, "amax")
        win = count == best_k[pk]
        major = torch.full((k,), c, dtype=torch.int64).scatter_reduce(0, pk[win], py[win], "amin")
    has_main = main >= 0
    # Each cluster that is some class's main cluster gets the row of the smallest such class.
    cluster_row = torch.full((max(k, 1),), c, dtype=torch.int64)
    cluster_row = cluster_row.scatter_reduce(0, main[has_main], torch.arange(c)[has_main], "amin")
    cluster_row[cluster_row == c] = -1
    positive_row = torch.where(has_main, cluster_row[main.clamp(min=0)], -1)
    centre_valid = has_main & (positive_row == torch.arange(c))
    align_label = torch.full((c,), -1, dtype=torch.int64)
    rows = torch.nonzero(centre_valid).squeeze(1)
    if rows.numel():
        owner = major[main[rows]]  # majority label of the cluster in row r
        own_main = main[owner] == main[rows]  # ... aligned only when it is that label's main cluster too
        align_label[rows[own_main]] = owner[own_main]

    sample_row = torch.where(member, cluster_row[ids.clamp(min=0)], -1)
    sums = torch.zeros(c, d, dtype=torch.float64)
    for s in range(0, features.shape[0], block):
        r = sample_row[s : s + block]
        sel = r >= 0
        sums.index_add_(0, r[sel], features[s : s + block].cpu()[sel].double())
    centres = F.normalize(sums, dim=1).float()

    count_y = torch.bincount(labels, minlength=c).double()
    seen = count_y > 0
    if hardness == "purity":
        good = member & (major[ids.clamp(min=0)] == labels)
        h = 1.0 - torch.bincount(labels[good], minlength=c).double() / count_y.clamp(min=1)
    else:
        spread = torch.zeros(c, dtype=torch.float64)
        for s in range(0, features.shape[0], block):
            y = labels[s : s + block]
            row = positive_row[y]
            sel = row >= 0
            x = features[s : s + block].cpu()[sel].double()
            spread.index_add_(0, y[sel], 1.0 - (x * centres[row[sel]].double()).sum(1))
        h = spread / count_y.clamp(min=1)
        top = h[seen & has_main].max() if bool((seen & has_main).any()) else torch.tensor(0.0)
        h = h / top if top > 0 else torch.zeros_like(h)
        h = torch.where(has_main, h, 1.0)  # every sample of the class is noise: as hard as it gets
    h = torch.where(seen, h, math.nan)
    margins = cluster_margins(h, base_margin, alpha, *margin_range)
    return ClusterTables(centres, centre_valid, positive_row, align_label, h, margins, k)


def scc_loss(
    unit: torch.Tensor, centres: torch.Tensor, positives: torch.Tensor, valid: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Prototype-contrastive loss: unit features (B, d), centres (R, d), positive rows (B,) (-1: sample left out),
    valid (R,) rows of the denominator. Mean over the kept samples; 0 when none is kept (never NaN)."""
    logits = unit @ centres.t() / temperature
    # A finite fill: a row with no valid centre (before clustering) must stay finite, gradient included.
    logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
    per = F.cross_entropy(logits, positives, ignore_index=-1, reduction="none")
    kept = (positives >= 0).sum()
    return per.sum() / kept.clamp(min=1)


def align_loss(weight: torch.Tensor, centres: torch.Tensor, align_label: torch.Tensor) -> torch.Tensor:
    """``mean_r (1 - W_l(r)/|W_l(r)| . c_r)`` over rows with align_label (C,) >= 0; weight (C, d), centres (C, d).
    The centres are detached, so only W gets a gradient. 0 when no row is aligned."""
    keep = align_label >= 0
    w = F.normalize(weight[align_label.clamp(min=0)].float(), dim=1)
    gap = 1.0 - (w * centres.detach().float()).sum(1)
    return torch.where(keep, gap, 0.0).sum() / keep.sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------------------------


class ClusterGuided(Regulariser):
    """Cluster-guided per-class margins (``class_margins``), SCC and alignment terms (``forward``), and the memory
    bank with its periodic clustering (``update``). N dataset samples, C classes, d embedding width.

    Buffers (all persistent): ``bank`` (N, d) unit features, ``bank_filled`` (N,) bool, ``bank_labels`` (N,);
    per class ``margins`` (C,) float64, ``hardness`` (C,) float64, ``centres`` (C, d) float32, ``centre_valid``,
    ``positive_row``, ``align_label`` (C,); scalars ``num_clusters`` and ``last_clustered_epoch`` (-1: never).
    """

    requires = frozenset({"indices"})
    # The buffers registered in __init__, declared so that type checkers see tensors (nn.Module.__getattr__ is
    # typed Tensor | Module).
    bank: torch.Tensor
    bank_filled: torch.Tensor
    bank_labels: torch.Tensor
    margins: torch.Tensor
    hardness: torch.Tensor
    centres: torch.Tensor
    centre_valid: torch.Tensor
    positive_row: torch.Tensor
    align_label: torch.Tensor
    num_clusters: torch.Tensor
    last_clustered_epoch: torch.Tensor

    def __init__(self, cfg: ClusterConfig, num_classes: int, embed_dim: int, num_samples: int) -> None:
        super().__init__()
        self.cfg = cfg
        c, d, n = num_classes, embed_dim, num_samples
        self.register_buffer("bank", torch.zeros(n, d, dtype=getattr(torch, cfg.bank_dtype)))
        self.register_buffer("bank_filled", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("bank_labels", torch.full((n,), -1, dtype=torch.int64))
        # float64, so that m0 reaches the head with the same rounding as the head's own python-float m2.
        self.register_buffer("margins", torch.full((c,), cfg.base_margin, dtype=torch.float64))
        self.register_buffer("hardness", torch.full((c,), math.nan, dtype=torch.float64))
        self.register_buffer("centres", torch.zeros(c, d))
        self.register_buffer("centre_valid", torch.zeros(c, dtype=torch.bool))
        self.register_buffer("positive_row", torch.full((c,), -1, dtype=torch.int64))
        self.register_buffer("align_label", torch.full((c,), -1, dtype=torch.int64))
        self.register_buffer("num_clusters", torch.zeros((), dtype=torch.int64))
        self.register_buffer("last_clustered_epoch", torch.full((), -1.0, dtype=torch.float64))
        # A host copy of last_clustered_epoch: reading the buffer every step would synchronise with the GPU.
        self._last_epoch = -1.0
        self.register_load_state_dict_post_hook(_refresh_host_copy)

    def class_margins(self) -> torch.Tensor:
        """(C,) float64 margins replacing the head's m2; m0 everywhere until the first clustering."""
        return self.margins

    def forward(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        """Unweighted-by-lambda terms ``scc_loss`` and ``align_loss`` (scalars); both 0 before any clustering.
        A mixed batch uses its dominant labels (``ctx.labels``)."""
        unit = F.normalize(ctx.features.to(self.centres.dtype), dim=-1)
        labels = ctx.labels
        positives = torch.where(labels >= 0, self.positive_row[labels.clamp(min=0)], -1)
        scc = scc_loss(unit, self.centres, positives, self.centre_valid, self.cfg.temperature)
        align = align_loss(ctx.head.weight, self.centres, self.align_label)
        return {"scc_loss": self.cfg.scc_weight * scc, "align_loss": self.cfg.align_weight * align}

    @torch.no_grad()
    def update(self, ctx: LossContext) -> None:
        """Write this step's features of every process into the bank; re-cluster when a period has passed."""
        self._write_bank(ctx)
        if self._due(ctx.epoch):
            self._recluster(ctx.comm, ctx.epoch)

    def _write_bank(self, ctx: LossContext) -> None:
        if ctx.indices is None:
            raise ValueError("cluster regulariser: LossContext.indices is required to fill the memory bank")
        unit = F.normalize(ctx.features.detach().float(), dim=-1).to(self.bank.dtype)
        labels = ctx.labels.long().to(unit.device)
        keep = torch.full_like(labels, int(self.cfg.bank_mixed or not ctx.mixed))
        meta = torch.stack([ctx.indices.long().to(unit.device), labels, keep], dim=1)
        # Every process gathers, skipped rows included: collectives must be called identically everywhere.
        unit, meta = ctx.comm.gather(unit.contiguous()), ctx.comm.gather(meta)
        index, labels, keep = meta.unbind(1)
        # One write per index (the last in gather order), so the bank never depends on scatter order.
        order = torch.sort(index, stable=True).indices
        last = torch.ones_like(keep, dtype=torch.bool)
        last[order[:-1]] = index[order[1:]] != index[order[:-1]]
        sel = (keep > 0) & last & (labels >= 0)
        index = index[sel].to(self.bank.device)
        self.bank[index] = unit[sel].to(self.bank.device)
        self.bank_labels[index] = labels[sel].to(self.bank.device)
        self.bank_filled[index] = True

    def _due(self, epoch: float) -> bool:
        period = self.cfg.recluster_every_epochs
        # Round 0 only fills the bank; afterwards once per period. A late fill postpones, it does not skip.
        last_round = math.floor(self._last_epoch / period) if self._last_epoch >= 0 else 0
        if math.floor(epoch / period) <= last_round:
            return False
        return float(self.bank_filled.float().mean()) >= self.cfg.min_fill

    def cluster_bank(self) -> ClusterTables:
        """Cluster the filled part of the bank and compute the tables (does not store them)."""
        filled = torch.nonzero(self.bank_filled).squeeze(1)
        # A full bank is used in place: indexing would copy it (6 GB for MS1MV2 in fp16).
        unit = self.bank if filled.numel() == self.bank.shape[0] else self.bank[filled]
        cfg = self.cfg
        ids = knn_clusters(
            unit, cfg.knn, cfg.threshold, cfg.min_cluster_size, cfg.mutual_knn, cfg.query_block, cfg.key_block
        )
        return cluster_tables(
            unit,
            self.bank_labels[filled],
            ids,
            self.margins.shape[0],
            cfg.hardness,
            cfg.base_margin,
            cfg.alpha,
            (cfg.margin_min, cfg.margin_max),
        )

    def _recluster(self, comm: Communicator, epoch: float) -> None:
        if comm.is_main:
            tables = self.cluster_bank()
            for name in _TABLES:
                value = getattr(tables, name)
                getattr(self, name).copy_(torch.as_tensor(value))
        for name in _TABLES:
            buf = getattr(self, name)
            # bool travels as uint8: not every backend broadcasts bool tensors.
            sent = comm.broadcast(buf.to(torch.uint8) if buf.dtype == torch.bool else buf)
            buf.copy_(sent)
        self.last_clustered_epoch.fill_(epoch)
        self._last_epoch = float(epoch)

    def extra_repr(self) -> str:
        n, d = self.bank.shape
        return f"samples={n}, dim={d}, classes={self.margins.shape[0]}, bank={self.cfg.bank_dtype}"


def _refresh_host_copy(module: ClusterGuided, incompatible_keys: Any) -> None:
    module._last_epoch = float(module.last_clustered_epoch)


@REGULARISERS.register("cluster")
def build_cluster(cfg: ClusterConfig, *, num_classes: int, embed_dim: int, num_samples: int) -> ClusterGuided:
    """The cluster-guided regulariser for a data set of ``num_samples`` images of ``num_classes`` identities."""
    cfg.validate()
    return ClusterGuided(cfg, num_classes, embed_dim, num_samples)
