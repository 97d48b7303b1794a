"""Re-seeding prototypes that (almost) no descriptor chose: the remedy for prototype collapse.

Why: the sliced-Wasserstein step samples prototypes in proportion to how many
descriptors chose them, so a prototype that starts in the middle of a blob of
descriptors takes every assignment, the others are almost never sampled and
stay where they are, and the k-means term then pulls every descriptor onto the
one winner. Measured on the two-kind test scene (docs/tusk.md): four
prototypes, one used, purity at chance. Restarting unused codes on data is the
standard fix in vector quantisation and k-means; picking the new position with
probability proportional to a descriptor's squared distance from its nearest
prototype (k-means++) puts the restarts where the existing prototypes explain
the data worst, i.e. on the kind that has no prototype yet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kp_perception.models.tusk_encoder import prototype_distances


@torch.no_grad()
def reseed_unused_prototypes(
    prototypes: Tensor,
    descriptors: Tensor,
    counts: Tensor,
    below: float = 0.1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Move every rarely chosen prototype onto a descriptor chosen k-means++ style.

    Args:
        prototypes: M×C parameter data (modified in place, left unit length).
        descriptors: N×C unit vectors from the current batch.
        counts: M assignments accumulated since the last restart.
        below: a prototype is re-seeded when its count is below this fraction of an
            even share (sum(counts) / M).
        generator: optional torch.Generator for the draw.

    Returns:
        the bool mask (M) of the re-seeded prototypes.
    """
    dead = counts < below * counts.sum() / counts.numel()
    n_dead = int(dead.sum())
    if n_dead == 0 or descriptors.shape[0] == 0:
        return torch.zeros_like(dead)
    # k-means++: each pick is drawn in proportion to the squared distance from the nearest
    # prototype chosen so far (live ones and earlier picks), so restarts spread over the data.
    nearest = torch.full((descriptors.shape[0],), float("inf"), dtype=descriptors.dtype, device=descriptors.device)
    if bool((~dead).any()):
        nearest = prototype_distances(descriptors.unsqueeze(0), F.normalize(prototypes[~dead], dim=1)).squeeze(0)
        nearest = nearest.min(dim=1).values
    for m in torch.nonzero(dead).flatten().tolist():
        weight = torch.nan_to_num(nearest, posinf=1.0).clamp_min(0) + 1e-12
        pick = int(torch.multinomial(weight, 1, generator=generator))
        prototypes[m] = F.normalize(descriptors[pick], dim=0)
        nearest = torch.minimum(nearest, (descriptors - prototypes[m]).pow(2).mean(dim=1))
    return dead
