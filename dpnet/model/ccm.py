"""Cycle Comparison Module (paper section 4.2): the confident query set C, its discriminator and
the pseudo-prototype P_q.

The CCM is written as static, batched tensor algebra so that it exports to ONNX without loops
or data-dependent shapes (the exact op list is ``dpnet_export.op_rules.CCM_ALLOWED_OPS``):

1. ``s = normalize(Fs)^T @ normalize(Fq)``: ``[B, K, Ns, Nq]`` cosine similarities (FP32).
2. ``j* = argmax_q s`` (Eq. 1) ``[B, K, Ns]``; ``back = argmax_s s`` ``[B, K, Nq]``;
   ``i* = back[j*]`` (Eq. 2) by a gather.
3. ``consistent[i'] = fg[i'] and fg[i*]``: the cycle i' -> j* -> i* ends on the foreground.
4. ``C[j] = any_i' consistent[i'] and j*[i'] == j``, a one-hot batched MatMul.

Argmax ties go to the lowest index, in PyTorch and in ONNX (``select_last_index=0``) alike.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "CycleComparison",
    "Discriminator",
    "cosine_similarity_matrix",
    "cycle_comparison",
    "cycle_comparison_reference",
    "l2_normalize",
    "pseudo_prototypes",
]

_EPS = 1e-6


def l2_normalize(features: Tensor, dim: int) -> Tensor:
    """Unit L2 norm along ``dim``; an all-zero vector stays zero."""
    norm = torch.linalg.vector_norm(features, dim=dim, keepdim=True)
    return features / torch.where(norm > _EPS, norm, torch.ones_like(norm))


def cosine_similarity_matrix(support_feats: Tensor, query_feats: Tensor) -> Tensor:
    """All-pairs cosine similarity of two feature maps.

    Args:
        support_feats: ``[B, D, Hs, Ws]``.
        query_feats: ``[B, D, Hq, Wq]``.

    Returns:
        ``[B, Ns, Nq]`` with Ns = Hs * Ws, Nq = Hq * Wq.
    """
    support_keys = l2_normalize(support_feats.flatten(2), dim=1).transpose(1, 2)
    query_keys = l2_normalize(query_feats.flatten(2), dim=1)
    return torch.bmm(support_keys, query_keys)


class CycleComparison(nn.Module):
    """The static confident-set computation; no parameters.

    Args:
        cycle: ``True`` for the CCM (cycle-consistent matches only); ``False`` gives the
            ``cosine`` ablation of Table 4 (every query position that is some support foreground
            position's most similar match).
    """

    def __init__(self, cycle: bool = True) -> None:
        super().__init__()
        self.cycle = cycle

    def forward(self, support_keys: Tensor, query_keys: Tensor, support_fg: Tensor) -> Tensor:
        """Confident query positions per shot.

        Args:
            support_keys: ``[B, K, Ns, D]`` L2-normalised support cosine features.
            query_keys: ``[B, D, Nq]`` L2-normalised query cosine features.
            support_fg: ``[B, K, Ns]`` support labels at feature size, 1 = foreground.

        Returns:
            ``[B, K, Nq]`` float 0/1, the set C.
        """
        similarity = torch.matmul(support_keys, query_keys.unsqueeze(1))
        forward_match = similarity.argmax(dim=-1)  # j* of Eq. 1, [B, K, Ns]
        start = support_fg > 0.5
        if self.cycle:
            backward_match = similarity.argmax(dim=-2)  # [B, K, Nq]
            end = torch.gather(backward_match, -1, forward_match)  # i* of Eq. 2
            start = start & torch.gather(start, -1, end)
        positions = torch.arange(query_keys.shape[-1], device=query_keys.device)
        one_hot = (forward_match.unsqueeze(-1) == positions).to(similarity.dtype)
        hits = torch.matmul(start.to(similarity.dtype).unsqueeze(-2), one_hot)  # [B, K, 1, Nq]
        return (hits > 0.5).to(similarity.dtype)[:, :, 0, :]


def cycle_comparison(support_feats: Tensor, query_feats: Tensor, support_mask: Tensor) -> Tensor:
    """The CCM's confident set C for one shot (static formulation).

    Args:
        support_feats: ``[B, C, Hs, Ws]`` support cosine features (any scale).
        query_feats: ``[B, C, Hq, Wq]`` query cosine features.
        support_mask: ``[B, Hs, Ws]`` support labels at feature size (foreground > 0.5).

    Returns:
        ``[B, Hq, Wq]`` float 0/1.

    >>> support, query = torch.randn(1, 8, 3, 4), torch.randn(1, 8, 5, 2)
    >>> cycle_comparison(support, query, torch.ones(1, 3, 4)).shape
    torch.Size([1, 5, 2])
    """
    support_keys = l2_normalize(support_feats.flatten(2), dim=1).transpose(1, 2).unsqueeze(1)
    query_keys = l2_normalize(query_feats.flatten(2), dim=1)
    fg = support_mask.flatten(1).unsqueeze(1)
    confidence = CycleComparison()(support_keys, query_keys, fg)
    return confidence[:, 0].reshape(query_feats.shape[0], *query_feats.shape[2:])


def cycle_comparison_reference(
    support_feats: Tensor, query_feats: Tensor, support_mask: Tensor
) -> Tensor:
    """Eq. 1-2 of the paper with plain Python loops; the test oracle for :func:`cycle_comparison`.

    The similarity G is the same :func:`cosine_similarity_matrix` as the static version, so both
    see bit-identical values and the comparison tests the selection logic, ties included.
    Same arguments and result as :func:`cycle_comparison`.
    """
    similarity = cosine_similarity_matrix(support_feats, query_feats).tolist()
    labels = (support_mask.flatten(1) > 0.5).tolist()
    batch, _, query_h, query_w = query_feats.shape
    confidence = torch.zeros(batch, query_h * query_w, dtype=support_feats.dtype)
    for b, (rows, fg) in enumerate(zip(similarity, labels, strict=True)):
        for i_start, is_fg in enumerate(fg):
            if not is_fg:
                continue
            j_star = _first_argmax(rows[i_start])
            i_star = _first_argmax([row[j_star] for row in rows])
            if fg[i_star]:
                confidence[b, j_star] = 1.0
    return confidence.reshape(batch, query_h, query_w)


def _first_argmax(values: list[float]) -> int:
    best = 0
    for index, value in enumerate(values):
        if value > values[best]:
            best = index
    return best


class Discriminator(nn.Module):
    """``h_j = sigmoid(FC2(ReLU(FC1(concat(Fq_j, P)))))`` for every query position j.

    FC1 on the concatenation is evaluated as ``W_q Fq_j + W_p P + b`` (the same linear map split
    by input) so the ``[B, K, Nq, 2C]`` concatenation is never materialised.

    Args:
        channels: C.
        hidden: width of FC1.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.channels = channels
        self.fc1 = nn.Linear(2 * channels, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, query_vectors: Tensor, prototypes: Tensor) -> Tensor:
        """Args: ``query_vectors [B, Nq, C]``, ``prototypes [B, K, C]``. Returns ``[B, K, Nq]``."""
        weight_query, weight_proto = self.fc1.weight.split(self.channels, dim=1)
        query_part = torch.matmul(query_vectors, weight_query.t()).unsqueeze(1)  # [B, 1, Nq, H]
        proto_part = torch.matmul(prototypes, weight_proto.t()) + self.fc1.bias  # [B, K, H]
        hidden = torch.relu(query_part + proto_part.unsqueeze(2))
        return torch.sigmoid(self.fc2(hidden)).squeeze(-1)


def pseudo_prototypes(query_vectors: Tensor, selected: Tensor, prototypes: Tensor) -> Tensor:
    """Eq. 3: the mean query feature over the selected set C', or P where C' is empty.

    Args:
        query_vectors: ``[B, Nq, C]``.
        selected: ``[B, K, Nq]`` float 0/1, the set C' per shot.
        prototypes: ``[B, K, C]`` support prototypes P (the K' = 0 fallback).

    Returns:
        ``[B, K, C]`` pseudo-prototypes P_q.
    """
    count = selected.sum(dim=-1, keepdim=True)  # [B, K, 1]
    total = torch.matmul(selected, query_vectors)  # [B, K, C]
    safe_count = torch.where(count > 0.5, count, torch.ones_like(count))
    return torch.where(count > 0.5, total / safe_count, prototypes)
