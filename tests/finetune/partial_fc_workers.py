"""The 2-process Partial FC equivalence: what each gloo process runs, and the replicated reference it must equal.

Spawned processes import this small module (not the test module). Every scenario is one batch of ``processes x
BATCH`` rows split in chunks; each process runs the objective with its `PartialFC` shard on its chunk. The reference
is what DDP makes of the replicated head: the mean over chunks of the replicated objective's loss on each chunk.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from finetune.context import Communicator, differentiable_gather
from finetune.heads import MarginHead
from finetune.objective import build_objective
from finetune.partial_fc import PartialFC
from finetune.regularisers import RegularisersConfig

CLASSES, DIM, BATCH = 7, 5, 4  # 7 classes on 2 processes: shards of 4 and 3
SCENARIOS: dict[str, dict[str, Any]] = {
    "arcface_filter_unpg": {"margins": (1.0, 0.5, 0.0), "interclass_filter": 0.2, "unpg": "local"},
    "combined_mixup": {"margins": (1.0, 0.3, 0.2), "mixup": True},
    "cosface_unpg_gathered": {"margins": (1.0, 0.0, 0.4), "unpg": "gathered"},
    # One positive per shard ({0} and {5}) of the ceil(0.5 x 4) = 2 and ceil(0.5 x 3) = 2 sampled: one random other.
    "arcface_sampled_unpg": {"margins": (1.0, 0.5, 0.0), "sample_rate": 0.5, "unpg": "local", "labels": [0, 5]},
}


def problem(scenario: dict[str, Any], processes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Embeddings (N, d) float64, labels (N,) and mixup's soft labels (N, C) (each chunk mixed with itself reversed,
    as timm pairs a batch) or None, the same in every process."""
    n = processes * BATCH
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, DIM, generator=generator, dtype=torch.float64)
    pool = torch.tensor(scenario.get("labels", range(CLASSES)))
    labels = pool[torch.randint(len(pool), (n,), generator=generator)]
    if not scenario.get("mixup"):
        return x, labels, None
    partners = labels.view(processes, BATCH).flip(1).reshape(-1)
    soft = 0.7 * F.one_hot(labels, CLASSES).double() + 0.3 * F.one_hot(partners, CLASSES).double()
    return x, labels, soft


def centres() -> torch.Tensor:
    return torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def regularisers(scenario: dict[str, Any]) -> RegularisersConfig:
    cfg = RegularisersConfig()
    if "unpg" in scenario:
        cfg.unpg.enabled, cfg.unpg.gather = True, scenario["unpg"] == "gathered"
    return cfg


def margin_options(scenario: dict[str, Any]) -> dict[str, Any]:
    return {"scale": 16.0, "margins": scenario["margins"], "interclass_filter": scenario.get("interclass_filter", 0.0)}


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return torch.cat(out)


def equivalence(rank: int, processes: int, init_file: str, out_dir: str) -> None:
    """Process ``rank``: every scenario's loss terms, its chunk's embedding gradient and its shard's gradient."""
    dist.init_process_group(
        "gloo", init_method="file://" + init_file, rank=rank, world_size=processes, timeout=timedelta(seconds=60)
    )
    try:
        comm = Communicator(is_main=rank == 0, rank=rank, gather=_all_gather, gather_with_grad=differentiable_gather)
        for name, scenario in SCENARIOS.items():
            x, labels, soft = problem(scenario, processes)
            shard = PartialFC(
                CLASSES,
                DIM,
                processes=processes,
                rank=rank,
                sample_rate=scenario.get("sample_rate", 1.0),
                **margin_options(scenario),
            ).double()
            with torch.no_grad():
                shard.weight.copy_(centres()[shard.start : shard.end])
            objective = build_objective(shard, regularisers(scenario), num_classes=CLASSES, embed_dim=DIM,
                                        num_samples=x.shape[0])  # fmt: skip
            rows = slice(rank * BATCH, (rank + 1) * BATCH)
            chunk = x[rows].clone().requires_grad_(True)
            terms = objective(chunk, labels[rows], soft_labels=None if soft is None else soft[rows], comm=comm)
            terms["loss"].backward()
            result = {"terms": {k: v.detach() for k, v in terms.items()}, "embedding_grad": chunk.grad}
            grad = shard.weight.grad
            sampled = torch.nonzero(grad.abs().sum(1) > 0).squeeze(1) + shard.start  # unsampled rows get exactly 0
            torch.save(result | {"centre_grad": grad, "classes": sampled}, f"{out_dir}/{name}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def replicated(scenario: dict[str, Any], classes: torch.Tensor, processes: int) -> dict[str, Any]:
    """The replicated head over the sampled ``classes`` only: each chunk's terms, and the gradients of their mean
    (DDP's average) with respect to the whole batch's embeddings and to every centre (0 where not sampled)."""
    x, labels, soft = problem(scenario, processes)
    x.requires_grad_(True)
    head = MarginHead(len(classes), DIM, **margin_options(scenario)).double()
    with torch.no_grad():
        head.weight.copy_(centres()[classes])
    objective = build_objective(head, regularisers(scenario), num_classes=len(classes), embed_dim=DIM,
                                num_samples=x.shape[0])  # fmt: skip
    labels = torch.searchsorted(classes, labels)  # every label is among the sampled classes
    soft = None if soft is None else soft[:, classes]
    unit = F.normalize(x, dim=-1)
    terms, total = [], x.new_zeros(())
    for rank in range(processes):
        rows = slice(rank * BATCH, (rank + 1) * BATCH)
        # UNPG's gather: every row, with gradient (one process's chunk is its own live tensor).
        comm = Communicator(
            rank=rank,
            gather=lambda t: labels,
            gather_with_grad=lambda t, rows=rows: torch.cat([unit[: rows.start], t, unit[rows.stop :]]),
        )
        chunk_terms = objective(x[rows], labels[rows], soft_labels=None if soft is None else soft[rows], comm=comm)
        terms.append({k: v.detach() for k, v in chunk_terms.items()})
        total = total + chunk_terms["loss"] / processes
    total.backward()
    centre_grad = torch.zeros(CLASSES, DIM, dtype=torch.float64)
    centre_grad[classes] = head.weight.grad
    return {"terms": terms, "embedding_grad": x.grad, "centre_grad": centre_grad}
