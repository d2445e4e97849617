"""lafs: landmark-based facial self-supervised learning for ViT face encoders.

Importing the package registers the ``lafs_vit_*_p8_112`` encoders with timm.
"""

from lafs import models  # noqa: F401  (registers the encoders with timm)

__version__ = "0.1.0"
