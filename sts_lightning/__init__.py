"""sts_lightning: the SAE-based Transferability Score for Lightning and HF/TRL fine-tuning.

Heavy optional stacks (sae-lens, trl) are imported lazily inside the functions that need them.
"""

from sts_lightning import functional
from sts_lightning.metric import TransferabilityCorrelation
from sts_lightning.stats import LatentMoments, PairedShift

__version__ = "0.1.0"

__all__ = [
    "LatentMoments",
    "PairedShift",
    "TransferabilityCorrelation",
    "__version__",
    "functional",
]
