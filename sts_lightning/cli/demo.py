"""``sts-lightning demo``: the STS core on synthetic sparse latents with a planted shift."""

from __future__ import annotations

import torch

from sts_lightning import functional as F
from sts_lightning.metric import TransferabilityCorrelation
from sts_lightning.stats import LatentMoments, PairedShift

__all__ = ["demo_report"]


def demo_report(seed: int = 0, d_sae: int = 4096, n_domains: int = 8) -> str:
    """The STS core on synthetic sparse latents with a planted shift; returns a text report."""
    g = torch.Generator().manual_seed(seed)
    shifted_latents = torch.randperm(d_sae, generator=g)[:100]
    shift = PairedShift(d_sae)
    for _ in range(10):  # 10 batches of 1,000 token rows, never held together
        base = torch.relu(torch.randn(1000, d_sae, generator=g) - 2.0)
        icl = base.clone()
        icl[:, shifted_latents] += torch.rand(1000, 100, generator=g)
        shift.update(base, icl)
    top = F.top_shifted(shift.feature_shift().float(), k=100)
    lines = [f"planted latents recovered: {F.overlap_at_k(top, shifted_latents)}/100"]
    metric = TransferabilityCorrelation()
    for i in range(n_domains):
        usage = i / (n_domains - 1)  # how strongly this domain uses the shifted latents
        domain = LatentMoments(d_sae)
        feats = torch.relu(torch.randn(2000, d_sae, generator=g) - 2.0)
        feats[:, shifted_latents] += usage * torch.rand(2000, 100, generator=g)
        domain.update(feats)
        realised = usage + 0.1 * torch.randn((), generator=g, dtype=torch.float64)
        metric.update(domain.sts_act(top), realised)
        lines.append(f"domain_{i}: STS_act={domain.sts_act(top).item():8.3f}  |Δ|={realised:6.3f}")
    out = metric.compute()
    lines.append(
        f"pearson={out['pearson']:.3f} [{out['pearson_ci_low']:.3f}, {out['pearson_ci_high']:.3f}]"
        f" spearman={out['spearman']:.3f} kendall={out['kendall']:.3f} n={int(out['n'])}"
    )
    return "\n".join(lines)
