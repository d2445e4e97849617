"""The one Accelerator: a seedable sampler, accumulation without forced syncs, threads shared out, settings restored."""

from __future__ import annotations

import os

import pytest
import torch

from lafs.engine import accelerator as engine_accelerator
from lafs.engine.accelerator import (
    build_accelerator,
    processes_on_this_node,
    thread_count,
    torch_settings,
    use_fused_adamw,
)


def test_one_process_on_cpu_with_the_run_options() -> None:
    accelerator = build_accelerator(gradient_accumulation_steps=3)
    assert accelerator.num_processes == 1 and accelerator.device.type in ("cpu", "cuda")
    assert accelerator.gradient_accumulation_steps == 3
    assert accelerator.dataloader_config.use_seedable_sampler  # a resumable data order
    assert not accelerator.gradient_state.plugin_kwargs.get("sync_with_dataloader", True)
    assert not use_fused_adamw(accelerator) or accelerator.device.type == "cuda"


@pytest.mark.parametrize(
    ("requested", "processes", "workers", "cores", "expected"),
    [
        (3, 8, 4, 2, 3),  # asked for: given as asked
        (0, 1, 0, 16, 16),  # one process, no workers: every core
        (0, 2, 2, 16, 6),  # 8 cores each, 2 of them for its loader workers
        (0, 4, 2, 2, 1),  # fewer cores than processes: at least one thread
    ],
)
def test_thread_count_shares_the_cores(
    monkeypatch: pytest.MonkeyPatch, requested: int, processes: int, workers: int, cores: int, expected: int
) -> None:
    monkeypatch.setattr(engine_accelerator.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert thread_count(requested, processes, workers) == expected


def test_processes_on_this_node_read_torchrun_local_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    accelerator = build_accelerator()
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert processes_on_this_node(accelerator) == accelerator.num_processes
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert processes_on_this_node(accelerator) == 8


def test_torch_settings_are_restored_after_the_run() -> None:
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch_settings(1, True, torch.device("cpu")):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"]
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
