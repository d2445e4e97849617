"""The few-shot protocol (`run_protocol`) and its results (`write_results`): `tools.fewshot` is its command."""

from lafs.fewshot.protocol import ARMS, REGULARISERS, FewShotConfig, run_protocol
from lafs.fewshot.results import summarise, write_results

__all__ = ["ARMS", "REGULARISERS", "FewShotConfig", "run_protocol", "summarise", "write_results"]
