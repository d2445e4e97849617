"""Pieces of the few-shot protocol that need no training stage: the seen / unseen split and pairs, the development
split, and the results (`write_results`). The protocol itself, which runs pretraining and fine-tuning, is
`finetune.fewshot` (the library never imports fine-tuning); `tools.fewshot` is its command."""

from lafs.fewshot.results import summarise, write_results

__all__ = ["summarise", "write_results"]
