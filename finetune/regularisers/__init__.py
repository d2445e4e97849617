"""Fine-tuning regularisers, one file per method; importing this package registers them all in REGULARISERS."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from finetune.regularisers.base import Regulariser, RegulariserConfig
from finetune.regularisers.cluster import ClusterConfig
from finetune.regularisers.coreface import CoReFaceConfig
from finetune.regularisers.intraloss import IntraLossConfig
from finetune.regularisers.landmark import LandmarkConfig
from finetune.regularisers.unpg import UNPGConfig
from lafs.engine import OptimConfig

logger = logging.getLogger("lafs.finetune")


@dataclass
class RegularisersConfig:
    """One entry per registered regulariser; each is off until ``<name>.enabled=true``."""

    unpg: UNPGConfig = field(default_factory=UNPGConfig)  # in-batch negative pairs (arXiv 2203.11593)
    coreface: CoReFaceConfig = field(default_factory=CoReFaceConfig)  # dropout-view contrast (arXiv 2304.11668)
    intraloss: IntraLossConfig = field(default_factory=IntraLossConfig)  # intra-class pull (arXiv 2107.03352)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # cluster-guided margin + SCC (arXiv 2312.04029)
    landmark: LandmarkConfig = field(default_factory=LandmarkConfig)  # LAFS landmark positions (arXiv 2403.08161)

    def enabled(self) -> dict[str, RegulariserConfig]:
        """Name -> config of the switched-on regularisers, in a fixed order."""
        return {name: cfg for name, cfg in vars(self).items() if cfg.enabled}

    def enabled_in_run(self, optim: OptimConfig) -> dict[str, RegulariserConfig]:
        """Name -> config of the switched-on regularisers with their weights in the run's epochs (validated first,
        so that a key checked against another, such as coreface.phase2_epoch, is checked as written). Each weight
        that changed is logged once, so the values a run used are on record."""
        resolved = {}
        for name, cfg in self.enabled().items():
            cfg.validate()
            resolved[name] = cfg.in_run(optim)
            if resolved[name].weight != cfg.weight:
                written, used = cfg.weight, resolved[name].weight
                unit = "fractions of the run" if written.unit == "fraction" else f"{cfg.recipe_epochs:g} epochs"
                logger.info(
                    f"regularisers.{name}.weight: {written.describe()} ({unit}) -> {used.describe()} "
                    f"(this run's {optim.epochs} epochs, optim.schedules={optim.schedules})"
                )
        return resolved


__all__ = ["Regulariser", "RegulariserConfig", "RegularisersConfig"]
