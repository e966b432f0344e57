"""How a block's weights can start other than at random: cluster prototypes and upcycled experts.

    init_prototypes   the prototypes mu of cluster routing: spherical k-means of training vectors
                      (k-means++ start, explicit generator), optionally balanced as BASE layers (each cluster
                      floor(M/N) or ceil(M/N) members), and the null expert's threshold from a quantile
    upcycle           sparse upcycling: every expert (and the shared expert) copied from a trained
                      single-expert block, plus Gaussian noise of std noise * std(tensor); the router
                      stays as initialised

Both are deterministic given their seed / generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sbmoe.modeling.moe import SBMoEBlock

MAX_KMEANS_VECTORS = 100_000  # a seeded sample beyond this: the balanced assignment is a Python loop


@torch.no_grad()
def init_prototypes(
    block: SBMoEBlock,
    vectors: torch.Tensor,
    seed: int,
    balanced: bool,
    iterations: int = 30,
    max_vectors: int = MAX_KMEANS_VECTORS,
) -> torch.Tensor:
    """Set the prototypes of a cluster-routing block from vectors [M, H] (e.g. the training documents'
    pooled vectors) and mark them initialised; with `null_quantile`, also set the null expert's threshold
    to that quantile of each vector's best cosine. Returns the k-means assignment [M'] of the (sampled)
    vectors. Same seed and vectors, same prototypes.
    """
    if block.router != "cluster":
        raise ValueError(f"init_prototypes needs a block with router 'cluster', not {block.router!r}")
    generator = torch.Generator().manual_seed(seed)
    points = F.normalize(torch.as_tensor(vectors).detach().float().cpu(), dim=-1)  # [M, H] unit vectors
    if len(points) > max_vectors:
        points = points[torch.randperm(len(points), generator=generator)[:max_vectors]]
    centroids, assignment = spherical_kmeans(points, block.num_experts, generator, iterations, balanced)
    block.prototypes.copy_(centroids.to(block.prototypes))
    block.prototypes_initialized.fill_(True)
    if block.settings.null_quantile is not None:
        best = (points @ centroids.T).max(dim=1).values  # [M] each vector's best cosine
        block.null_cutoff.fill_(torch.quantile(best, block.settings.null_quantile).item())
    return assignment


def spherical_kmeans(
    points: torch.Tensor, k: int, generator: torch.Generator, iterations: int, balanced: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on the unit sphere (cosine similarity) of unit vectors [M, H]: centroids [k, H] (unit
    length) and the assignment [M]. k-means++ start; stops early when the assignment no longer changes."""
    if len(points) < k:
        raise ValueError(f"k-means of {k} clusters needs at least {k} vectors, got {len(points)}")
    centroids = points[_kmeans_plus_plus(points, k, generator)]  # [k, H]
    assignment = None
    for _ in range(iterations):
        similarity = points @ centroids.T  # [M, k]
        new = balanced_assignment(similarity) if balanced else similarity.argmax(dim=1)
        if assignment is not None and torch.equal(new, assignment):
            break
        assignment = new
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)  # [k, H]
        empty = torch.bincount(assignment, minlength=k) == 0
        if empty.any():  # an empty cluster restarts at the points farthest from their centroid
            own = similarity.gather(1, assignment[:, None])[:, 0]  # [M]
            sums[empty] = points[own.argsort()[: int(empty.sum())]]
        centroids = F.normalize(sums, dim=-1)
    return centroids, assignment


def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k distinct starting rows: the first uniform, each next with probability ~ (1 - best cosine)^2."""
    chosen = [int(torch.randint(len(points), (1,), generator=generator))]
    closest = points @ points[chosen[0]]  # [M] best cosine to a chosen row
    for _ in range(1, k):
        weights = (1 - closest).clamp(min=0) ** 2
        weights[chosen] = 0
        if not weights.sum() > 0:  # every other row duplicates a chosen one
            weights = torch.ones(len(points))
            weights[chosen] = 0
        index = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(index)
        closest = torch.maximum(closest, points @ points[index])
    return torch.tensor(chosen)


def balanced_assignment(similarity: torch.Tensor) -> torch.Tensor:
    """Capacity-constrained greedy assignment of M rows to k clusters by similarity [M, k]: pairs taken best
    first, each cluster holding floor(M/k) rows and M mod k of them one more. [M] cluster per row."""
    rows, k = similarity.shape
    base, extra = divmod(rows, k)
    order = similarity.flatten().argsort(descending=True, stable=True).tolist()  # (row, cluster) pairs
    assignment = [-1] * rows
    sizes = [0] * k
    assigned = 0
    for pair in order:
        row, cluster = divmod(pair, k)
        if assignment[row] != -1 or sizes[cluster] > base or (sizes[cluster] == base and not extra):
            continue
        if sizes[cluster] == base:
            extra -= 1
        assignment[row] = cluster
        sizes[cluster] += 1
        assigned += 1
        if assigned == rows:
            break
    return torch.tensor(assignment)


@torch.no_grad()
def upcycle(block: SBMoEBlock, source_block: SBMoEBlock, generator: torch.Generator, noise: float) -> None:
    """Sparse upcycling: copy the single expert of `source_block` (e.g. a trained adapter) into every expert
    of `block`, and into its shared expert if any, each tensor then perturbed by Gaussian noise of std
    noise * std(source tensor) so the experts can diverge. The router is left as it is (fresh).

    Raises ValueError naming the mismatch (expert count, activation, shapes).
    """
    if source_block.num_experts != 1:
        raise ValueError(f"upcycling needs a source block with 1 expert, got {source_block.num_experts}")
    if noise < 0:
        raise ValueError(f"upcycle noise must be >= 0, got {noise}")
    source_activation = source_block.settings.expert_activation
    if source_activation != block.settings.expert_activation:
        raise ValueError(
            f"expert_activation differs: source {source_activation!r}, "
            f"this block {block.settings.expert_activation!r}"
        )
    source = source_block.experts[0].state_dict()
    targets = [*block.experts, *([block.shared_expert] if block.shared_expert is not None else [])]
    for target in targets:
        for name, tensor in target.state_dict().items():
            value = source[name].float()
            if value.shape != tensor.shape:
                raise ValueError(
                    f"expert shapes differ: {name} is {tuple(value.shape)} in the source, "
                    f"{tuple(tensor.shape)} here (hidden size or expert_hidden_size)"
                )
            scale = noise * float(value.std()) if value.numel() > 1 else 0.0
            perturbed = value + scale * torch.randn(value.shape, generator=generator) if scale else value
            tensor.copy_(perturbed.to(tensor))
