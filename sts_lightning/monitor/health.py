"""Is the SAE any good on this model, and does it stay good while the model trains?

Every STS number is read through the SAE: an SAE that reconstructs little of the model's
residual stream (high FVU, fraction of variance unexplained) or whose latents never fire makes
every score noise. :class:`SAEHealth` checks, with the thresholds of ``TrackerConfig``:

- **at train start**, on the forecast's training rows: FVU above ``sae_max_fvu`` (default 0.5;
  a good SAE is well below 0.3, a random one above 1) or a dead-latent fraction above
  ``sae_max_dead`` (default 0.9) warns;
- **at every measurement**, the base SAE's FVU and L0 on the *current* model's probe rows
  (``sts/sae/fvu``, ``sts/sae/l0``). Fine-tuning moves the residual stream away from what the SAE
  was trained on; once the probe FVU is more than **twice its step-0 value** (and above 0.1),
  or crosses ``sae_max_fvu`` from below, the realised shift mixes real latent changes with
  reconstruction error, and a warning says so (once per run).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from sts_lightning.model.sae import evaluate_sae

__all__ = ["DRIFT_FACTOR", "DRIFT_FLOOR", "SAEHealth"]

DRIFT_FACTOR = 2.0
"""The probe FVU may grow to this multiple of its step-0 value before the shift is unreliable."""
DRIFT_FLOOR = 0.1
"""...and to this FVU at least (a near-perfect SAE at step 0 must not warn on rounding noise)."""


class SAEHealth:
    """The SAE checks of one tracked run (see the module docstring).

    Args:
        max_fvu: FVU above which the SAE is flagged (``TrackerConfig.sae_max_fvu``).
        max_dead: Dead-latent fraction above which it is flagged (``sae_max_dead``).
    """

    def __init__(self, max_fvu: float, max_dead: float) -> None:
        self.max_fvu, self.max_dead = max_fvu, max_dead
        self.base_fvu: float | None = None
        """FVU on the step-0 probe rows (computed at the first measurement, not checkpointed)."""
        self.drift_warned = False

    def check_start(self, quality: Mapping[str, float], layer: int) -> list[str]:
        """Warn about a useless SAE from the forecast's ``quality``; returns the warnings."""
        found = []
        if quality["fvu"] > self.max_fvu:
            found.append(
                f"the SAE reconstructs this model's layer-{layer} activations poorly (FVU "
                f"{quality['fvu']:.2f} > sae_max_fvu={self.max_fvu}): its latents are mostly "
                "noise and every STS score is unreliable; check that the SAE was trained on "
                "this model and layer"
            )
        if quality["dead_fraction"] > self.max_dead:
            found.append(
                f"{quality['dead_fraction']:.0%} of the SAE's latents never fire on this model's "
                f"layer-{layer} activations (> sae_max_dead={self.max_dead}): the SAE does not "
                "fit the model and STS scores are unreliable"
            )
        for message in found:
            warnings.warn(f"STS: {message}", UserWarning, stacklevel=3)
        return found

    def measure(self, sae: Any, base_rows: Tensor, now_rows: Tensor) -> dict[str, float]:
        """``sts/sae/fvu`` and ``sts/sae/l0`` on the current rows; warns once on drift.

        Args:
            sae: The base SAE.
            base_rows: Probe rows of the base model ``(n, d_model)``.
            now_rows: The same token rows in the current model.
        """
        if self.base_fvu is None:
            self.base_fvu = evaluate_sae(sae, base_rows)["fvu"]
        now = evaluate_sae(sae, now_rows)
        crossed = self.base_fvu <= self.max_fvu < now["fvu"]
        drifted = now["fvu"] > max(DRIFT_FACTOR * self.base_fvu, DRIFT_FLOOR)
        if not self.drift_warned and (drifted or crossed):
            self.drift_warned = True
            warnings.warn(
                f"STS: the SAE no longer fits the trained model (probe FVU {now['fvu']:.2f}, "
                f"{self.base_fvu:.2f} at step 0; the rule: more than {DRIFT_FACTOR:g}x its "
                f"step-0 value or above sae_max_fvu={self.max_fvu}): the realised shift now "
                "mixes latent changes with reconstruction error and is unreliable",
                UserWarning,
                stacklevel=3,
            )
        return {"sts/sae/fvu": now["fvu"], "sts/sae/l0": now["l0"]}
