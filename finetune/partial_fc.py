"""Partial FC: the class centres sharded across processes, each step's softmax over sampled classes.

With millions of identities the class centres, their gradient and their optimiser state (4 x C x d floats) no longer
fit beside the encoder on every process. Partial FC (An et al., arXiv 2203.15565; insightface arcface_torch
``partial_fc_v2.py``) gives each process a block of the classes. In every step each process:

1. gathers the whole batch's embeddings (with gradient) and targets;
2. keeps its positives (its classes that some row of the batch belongs to) and a random ``sample_rate`` share of
   its other classes, drawn from a generator seeded by (seed, process, step, micro-batch), so a resumed run draws
   the same classes again;
3. computes cosines and margin logits of every row to its sampled centres (`Margin.logits`: the margin applies where
   it owns the row's class, mixup's soft targets spread it, the inter-class filter works column by column);
4. reduces its columns to each row's log-sum-exp and target logit; one differentiable gather brings every process's
   pieces together, so its loss over its own rows is the cross-entropy of the full softmax.

Gradients. Each process's loss covers its own rows, as with the replicated head. The gathers' backward sums over the
processes, so every process's embeddings and centres receive the gradient of every process's loss. The encoder's,
once DDP averages it, is then the mean loss's gradient; the shards, which DDP must not touch, get theirs scaled by
1 / processes in the forward pass, which makes it the mean loss's gradient too. At ``sample_rate = 1`` both equal a
single process's full softmax over the concatenated batch (tested on 2 gloo processes).

Contiguous blocks (the first C mod W processes hold one class more, as arcface_torch's): owning a class is a range
test, a shard is one slice of the full matrix, and re-sharding for another process count reads the saved blocks in
order and cuts new ones (`read_rows`), slice by slice from the files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from finetune.context import Communicator
from finetune.heads import Guard, HeadConfig, Margin, cosine_matrix
from lafs.engine.checkpoints import ProcessLocal
from lafs.errors import ConfigError, DataError

INIT_BLOCK = 4096  # classes per seeded block of initial centres: class c starts the same for any process count


def shard_range(num_classes: int, processes: int, rank: int) -> tuple[int, int]:
    """Classes [start, end) of process ``rank`` of ``processes``: contiguous blocks, the first C mod W one larger."""
    size, extra = divmod(num_classes, processes)
    start = rank * size + min(rank, extra)
    return start, start + size + int(rank < extra)


def mixed_seed(*values: int) -> int:
    """A 64-bit generator seed mixing non-negative integers (numpy's SeedSequence: nearby inputs, unrelated seeds)."""
    return int(np.random.SeedSequence([v % 2**63 for v in values]).generate_state(1, dtype=np.uint64)[0])


def initial_centres(start: int, end: int, dim: int, seed: int) -> torch.Tensor:
    """Centres (end - start, dim) of classes [start, end), N(0, 0.01^2) like the replicated head's.

    Drawn in blocks of `INIT_BLOCK` classes from generators seeded by (seed, block), so a class starts from the same
    centre whatever the process count, and no process ever draws the whole matrix.
    """
    first, last = start // INIT_BLOCK, (end - 1) // INIT_BLOCK
    blocks = [
        torch.empty(INIT_BLOCK, dim).normal_(0.0, 0.01, generator=torch.Generator().manual_seed(mixed_seed(seed, b)))
        for b in range(first, last + 1)
    ]
    offset = first * INIT_BLOCK
    return torch.cat(blocks)[start - offset : end - offset].clone()


def read_rows(files: list[Path], start: int, end: int, num_classes: int) -> dict[str, torch.Tensor]:
    """Rows [start, end) of every row-wise tensor of the saved shards ``files`` (rank order), plus their scalars.

    Each file holds ``classes`` = (its start, its end, C) and tensors whose first dimension runs over its classes,
    or scalars (the optimiser's step count, equal in every file). Only the needed slices are read.
    """
    pieces: dict[str, list[torch.Tensor]] = {}
    scalars: dict[str, torch.Tensor] = {}
    covered = 0  # the saved shards must tile [0, C) in rank order
    for file in files:
        with safe_open(str(file), framework="pt") as saved:
            first, last, total = (int(v) for v in saved.get_tensor("classes"))
            if total != num_classes or first != covered or last < first:
                raise DataError(
                    f"{file.name} holds classes [{first}, {last}) of {total}; expected a shard of {num_classes} "
                    f"classes starting at {covered}"
                )
            covered = last
            low, high = max(start, first), min(end, last)
            for key in saved.keys():  # noqa: SIM118 (a safetensors file handle, not a dict)
                if key == "classes":
                    continue
                part = saved.get_slice(key)
                if not part.get_shape():
                    scalars.setdefault(key, saved.get_tensor(key))
                elif low < high:
                    pieces.setdefault(key, []).append(part[low - first : high - first])
    if covered != num_classes:
        raise DataError(f"the saved shards stop at class {covered} of {num_classes}: a process's file is missing")
    return {key: torch.cat(parts) for key, parts in pieces.items()} | scalars


@dataclass
class ShardedScores:
    """One `PartialFC` call on this process: V views, N gathered rows, S sampled classes, B own rows."""

    cosines: torch.Tensor  # (V, N, S) cos(theta) of every gathered row to the sampled centres, clamped
    logits: torch.Tensor  # (V, N, S) their scaled logits, margins applied
    classes: torch.Tensor  # (S,) int64 the sampled classes, global ids in ascending order
    lse: torch.Tensor  # (V, B) each own row's log-sum-exp over every process's sampled classes
    target: torch.Tensor  # (V, B) each own row's target logit (soft targets: the mass-weighted sum of theirs)
    mass: torch.Tensor  # (B,) each own row's target mass: 1, or 0 for a row without a label (-1)

    def cross_entropy(self) -> torch.Tensor:
        """Mean cross-entropy over the views and the labelled own rows, as `heads.margin_cross_entropy` averages."""
        labelled = self.mass > 0
        per_row = self.mass * self.lse - self.target  # -sum_c y_c log p_c, with sum_c y_c = mass
        return per_row[:, labelled].sum() / (per_row.shape[0] * labelled.sum().clamp(min=1))


class _ScaleGradient(torch.autograd.Function):
    """Identity on the way forward; the gradient times ``factor`` on the way back."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def soft_targets(
    labels: torch.Tensor, soft_labels: torch.Tensor | None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's two target classes (B, 2) int64 (-1: none) and their mass (B, 2) in ``dtype``, from hard labels
    (B,) or mixup's soft labels (B, C), which put mass on two classes at most (timm's, without label smoothing).

    Always two columns: a process whose batch was mixed and one whose batch was not gather tensors of one shape.
    """
    if soft_labels is None:
        ids = torch.stack([labels, torch.full_like(labels, -1)], dim=1)
        return ids, torch.stack([labels >= 0, torch.zeros_like(labels, dtype=torch.bool)], dim=1).to(dtype)
    mass, ids = soft_labels.topk(2, dim=-1)
    if not torch.allclose(mass.sum(-1), soft_labels.sum(-1)):
        raise ValueError("partial FC: soft labels may put mass on at most 2 classes per row (mixup, no smoothing)")
    return torch.where(mass > 0, ids, -1), mass.to(dtype)


class PartialFC(Margin, ProcessLocal):
    """This process's shard ``weight`` (C_r, d) of the class centres: classes [start, end) of C.

    Call: embeddings (V, B, d) of this process's rows, labels (B,) int64 (-1: none), soft labels (B, C) or None,
    the communicator and the optimiser step -> `ShardedScores`. Every process must call it together (collectives).
    It is kept out of the DDP-wrapped model (`finetune.objective.Objective` holds it aside): DDP must not average
    the shards. The task places it, trains ``weight`` with the run's optimiser (`add_to`) and checkpoints it per
    process (`ProcessLocal`).
    """

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        *,
        processes: int = 1,
        rank: int = 0,
        sample_rate: float = 1.0,
        seed: int = 0,
        scale: float = 64.0,
        margins: tuple[float, float, float] = (1.0, 0.5, 0.0),
        guard: Guard = "threshold",
        straight_through: bool = False,
        interclass_filter: float = 0.0,
    ) -> None:
        super().__init__(scale, margins, guard, straight_through, interclass_filter)
        if processes > num_classes:
            raise ConfigError(f"head.partial_fc: {processes} processes need at least as many classes ({num_classes})")
        if not 0 <= rank < processes or not 0 < sample_rate <= 1:
            raise ValueError(f"partial FC: rank {rank} of {processes}, sample_rate {sample_rate}")
        self.num_classes, self.processes, self.rank = num_classes, processes, rank
        self.start, self.end = shard_range(num_classes, processes, rank)
        self.sample_rate, self.seed = sample_rate, seed
        self.weight = nn.Parameter(initial_centres(self.start, self.end, embed_dim, seed))
        self._optimizer: torch.optim.Optimizer | None = None
        self._generator: torch.Generator | None = None
        self._step, self._micro_batch = -1, 0  # which call of which step this is: the sampling seed

    @property
    def num_local(self) -> int:
        return self.end - self.start

    # ------------------------------------------------------------------------------------------------ forward --

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        soft_labels: torch.Tensor | None = None,
        comm: Communicator | None = None,
        step: int = 0,
    ) -> ShardedScores:
        """This process's share of the margin softmax of the whole batch (see the module's docstring)."""
        comm = comm or Communicator()
        if comm.rank != self.rank:
            raise ValueError(f"partial FC: built for process {self.rank}, called by {comm.rank}")
        views, b = embeddings.shape[:2]
        ids, mass = soft_targets(labels, soft_labels, embeddings.dtype)
        everyone = comm.gather_with_grad(embeddings.transpose(0, 1).contiguous()).transpose(0, 1)  # (V, N, d)
        if everyone.shape[1] != b * self.processes:
            raise ValueError(f"partial FC: gathered {everyone.shape[1]} rows, not {self.processes} x {b}")
        gathered = comm.gather(torch.cat([labels[:, None], ids], dim=1))
        dominant, ids_all, mass_all = gathered[:, 0], gathered[:, 1:], comm.gather(mass)
        mine = (ids_all >= self.start) & (ids_all < self.end) & (mass_all > 0)
        classes = self._sample(ids_all[mine] - self.start, step)
        centres = self.weight if classes is None else self.weight[classes]
        if self.processes > 1:
            centres = _ScaleGradient.apply(centres, 1.0 / self.processes)
        cos = cosine_matrix(everyone, centres)  # (V, N, S)
        dominant_column = self._columns(dominant, classes)
        if soft_labels is None:
            logits = self.logits(cos, dominant_column)
            index = dominant_column.clamp(min=0)[None, :, None].expand(views, -1, 1)
            target = torch.where(dominant_column >= 0, logits.gather(-1, index).squeeze(-1), 0.0)
        else:
            columns = torch.where(mine, self._columns(ids_all, classes), -1)
            soft = torch.zeros_like(cos[0]).scatter_add_(
                1, columns.clamp(min=0), torch.where(columns >= 0, mass_all, 0.0).to(cos.dtype)
            )
            logits = self.logits(cos, dominant_column, soft)
            target = (soft * logits).sum(-1)
        # One collective for both pieces; each process keeps its own rows, the backward returns every row's share.
        pieces = comm.gather_with_grad(torch.stack([torch.logsumexp(logits, dim=-1), target])[None])
        own = slice(self.rank * b, (self.rank + 1) * b)
        local = torch.arange(self.num_local, device=cos.device) if classes is None else classes
        return ShardedScores(
            cosines=cos,
            logits=logits,
            classes=local + self.start,
            lse=torch.logsumexp(pieces[:, 0, :, own], dim=0),
            target=pieces[:, 1, :, own].sum(dim=0),
            mass=mass.sum(-1),
        )

    def _columns(self, ids: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        """Column of global class ``ids`` (any shape) in this step's logits; -1 for classes of other processes.

        (Any of this process's classes a row targets is among the sampled ones: `_sample` keeps every positive.)
        """
        local = ids - self.start
        inside = (local >= 0) & (local < self.num_local)
        local = local.clamp(0, self.num_local - 1)
        column = local if classes is None else torch.searchsorted(classes, local)
        return torch.where(inside, column, -1)

    def _sample(self, positives: torch.Tensor, step: int) -> torch.Tensor | None:
        """Sorted local indices (S,) of this call's classes: every positive, then random others up to
        ceil(sample_rate x C_r); None for all of them (sample_rate = 1)."""
        if self.sample_rate >= 1:
            return None
        if step != self._step:
            self._step, self._micro_batch = step, 0
        else:
            self._micro_batch += 1
        device = self.weight.device
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        self._generator.manual_seed(mixed_seed(self.seed, self.rank, step, self._micro_batch))
        score = torch.rand(self.num_local, generator=self._generator, device=device)
        score[positives] = 2.0  # above every random score: the positives always make the cut
        count = max(math.ceil(self.sample_rate * self.num_local), int((score > 1).sum()))
        return score.topk(count).indices.sort().values

    # ------------------------------------------------------------------------------ optimiser and checkpoint --

    def add_to(self, optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
        """Train the shard with ``optimizer`` at the full learning rate (as the replicated head: no layer decay).

        Its optimiser state stays out of ``optimizer.state_dict()`` (which the main process alone saves);
        `process_state` carries it instead.
        """
        optimizer.add_param_group({"params": [self.weight], "weight_decay": weight_decay, "lr_scale": 1.0})
        optimizer.register_state_dict_post_hook(self._without_shard)
        self._optimizer = optimizer

    def _without_shard(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state_dict["state"].pop(next(i for i, p in enumerate(params) if p is self.weight), None)
        return state_dict

    def process_state(self) -> dict[str, torch.Tensor]:
        """The shard (``weight``), its classes (start, end, C) and its optimiser state (``optimizer.<key>``)."""
        state = {"weight": self.weight.detach(), "classes": torch.tensor([self.start, self.end, self.num_classes])}
        if self._optimizer is not None:
            for key, value in self._optimizer.state.get(self.weight, {}).items():
                state[f"optimizer.{key}"] = torch.as_tensor(value)
        return state

    def load_process_state(self, files: list[Path]) -> None:
        """Classes [start, end) and their optimiser state from the saved shards ``files``, whatever their count."""
        rows = read_rows(files, self.start, self.end, self.num_classes)
        with torch.no_grad():
            self.weight.copy_(rows.pop("weight"))
        if self._optimizer is not None:
            state = {key.removeprefix("optimizer."): self._placed(key, value) for key, value in rows.items()}
            self._optimizer.state.pop(self.weight, None)
            if state:
                self._optimizer.state[self.weight] = state

    def _placed(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """Optimiser state ``value`` where torch's own `Optimizer.load_state_dict` would put it for ``weight``."""
        assert self._optimizer is not None
        group = next(g for g in self._optimizer.param_groups if any(p is self.weight for p in g["params"]))
        if key == "optimizer.step" and not (group.get("fused") or group.get("capturable")):
            return value  # the step count stays a CPU tensor
        dtype = self.weight.dtype if value.is_floating_point() else value.dtype
        return value.to(device=self.weight.device, dtype=dtype)

    def extra_repr(self) -> str:
        shard = f"classes [{self.start}, {self.end}) of {self.num_classes}, dim={self.weight.shape[1]}"
        sampling = f"process {self.rank} of {self.processes}, sample_rate={self.sample_rate}"
        return f"{shard}, {sampling}, {super().extra_repr()}"


def build_partial_fc(
    cfg: HeadConfig, num_classes: int, embed_dim: int, *, processes: int, rank: int, seed: int
) -> PartialFC:
    """Process ``rank``'s shard of the configured head (``cfg.partial_fc.enabled``) for ``num_classes`` identities."""
    return PartialFC(
        num_classes,
        embed_dim,
        processes=processes,
        rank=rank,
        sample_rate=cfg.partial_fc.sample_rate,
        seed=seed,
        **cfg.margin_options(),
    )
