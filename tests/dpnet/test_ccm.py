"""The static CCM equals the loop reference of Eq. 1-2, ties and edge masks included."""

from __future__ import annotations

import pytest
import torch

from dpnet.model.ccm import (
    CycleComparison,
    Discriminator,
    cycle_comparison,
    cycle_comparison_reference,
    l2_normalize,
    pseudo_prototypes,
)


def _random_case(
    seed: int, batch: int, channels: int, support_hw: tuple[int, int], query_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    support = torch.randn(batch, channels, *support_hw, generator=gen)
    query = torch.randn(batch, channels, *query_hw, generator=gen)
    mask = (torch.rand(batch, *support_hw, generator=gen) > 0.5).float()
    return support, query, mask


@pytest.mark.parametrize(
    ("support_hw", "query_hw"),
    [((7, 7), (7, 7)), ((5, 9), (6, 4)), ((1, 13), (11, 3))],
    ids=["square", "non-square", "thin"],
)
@pytest.mark.parametrize("seed", range(4))
def test_static_ccm_equals_reference_on_random_features(support_hw, query_hw, seed):
    support, query, mask = _random_case(seed, 2, 16, support_hw, query_hw)
    assert torch.equal(
        cycle_comparison(support, query, mask), cycle_comparison_reference(support, query, mask)
    )


def test_static_ccm_equals_reference_with_exact_ties():
    # Four distinct vectors repeated over the maps: every argmax has exact ties to break.
    gen = torch.Generator().manual_seed(3)
    palette = torch.randn(4, 8, generator=gen)
    support = palette[torch.randint(0, 4, (2, 6, 6), generator=gen)].permute(0, 3, 1, 2)
    query_ids = torch.randint(0, 4, (2, 5, 7), generator=gen)
    query = palette[query_ids].permute(0, 3, 1, 2)
    mask = (torch.rand(2, 6, 6, generator=gen) > 0.4).float()
    static = cycle_comparison(support, query, mask)
    assert torch.equal(static, cycle_comparison_reference(support, query, mask))
    # Ties go to the lowest index: each selected query position is the first of its value.
    assert static.sum() > 0
    for episode in range(2):
        values = query_ids[episode].flatten().tolist()
        selected = static[episode].flatten().nonzero().flatten().tolist()
        assert all(values.index(values[j]) == j for j in selected), (values, selected)


def test_ties_pick_lowest_index():
    # All query positions equal: every support position matches query position 0 only.
    support = torch.ones(1, 4, 3, 3)
    query = torch.ones(1, 4, 2, 2)
    confidence = cycle_comparison(support, query, torch.ones(1, 3, 3))
    assert confidence.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("fill", [0.0, 1.0], ids=["all-background", "all-foreground"])
def test_static_ccm_on_uniform_masks(fill):
    support, query, _ = _random_case(7, 2, 16, (6, 6), (6, 6))
    mask = torch.full((2, 6, 6), fill)
    static = cycle_comparison(support, query, mask)
    assert torch.equal(static, cycle_comparison_reference(support, query, mask))
    if fill == 0.0:
        assert static.sum() == 0
    else:  # every cycle ends on foreground: C is the image of j*, never empty
        assert static.flatten(1).sum(1).min() >= 1


@pytest.mark.parametrize("shots", [1, 5])
def test_batched_shots_equal_per_shot_reference(shots):
    gen = torch.Generator().manual_seed(shots)
    support = torch.randn(2, shots, 16, 5, 6, generator=gen)
    query = torch.randn(2, 16, 4, 7, generator=gen)
    mask = (torch.rand(2, shots, 5, 6, generator=gen) > 0.5).float()
    keys = l2_normalize(support.flatten(3), dim=2).transpose(-1, -2)
    batched = CycleComparison()(keys, l2_normalize(query.flatten(2), dim=1), mask.flatten(2))
    for shot in range(shots):
        expected = cycle_comparison_reference(support[:, shot], query, mask[:, shot])
        assert torch.equal(batched[:, shot].reshape(2, 4, 7), expected)


def test_cosine_variant_keeps_every_forward_match():
    support, query, mask = _random_case(1, 1, 16, (6, 6), (6, 6))
    keys = l2_normalize(support.flatten(2), dim=1).transpose(1, 2)[:, None]
    query_keys = l2_normalize(query.flatten(2), dim=1)
    cosine = CycleComparison(cycle=False)(keys, query_keys, mask.flatten(1)[:, None])
    cycle = CycleComparison(cycle=True)(keys, query_keys, mask.flatten(1)[:, None])
    assert bool((cycle <= cosine).all())  # the cycle check only removes positions


def test_cycle_check_drops_a_match_whose_cycle_ends_on_background():
    # Support position 0 (object) and 1 (background); query positions 0 and 1. Support 0's best
    # match is query 0, but query 0 is closer to support 1 (background): the cycle 0 -> 0 -> 1
    # ends on the background, so the CCM drops query 0 and the cosine variant keeps it.
    support_keys = torch.tensor([[1.0, 0.0], [0.8, 0.6]])[None, None]  # [B, K, Ns, D]
    query_keys = torch.tensor([[0.6, 0.0], [0.8, 1.0]])[None]  # [B, D, Nq]: (0.6, 0.8), (0, 1)
    fg = torch.tensor([[[1.0, 0.0]]])
    cosine = CycleComparison(cycle=False)(support_keys, query_keys, fg)
    cycle = CycleComparison(cycle=True)(support_keys, query_keys, fg)
    assert cosine.flatten().tolist() == [1.0, 0.0]
    assert cycle.flatten().tolist() == [0.0, 0.0]


def test_empty_selection_falls_back_to_prototype():
    query_vectors = torch.randn(2, 10, 8)
    prototypes = torch.randn(2, 3, 8)
    selected = torch.zeros(2, 3, 10)
    selected[1, 2, 4] = 1.0
    pseudo = pseudo_prototypes(query_vectors, selected, prototypes)
    assert torch.equal(pseudo[0], prototypes[0])
    assert torch.allclose(pseudo[1, 2], query_vectors[1, 4])
    assert torch.isfinite(pseudo).all()


def test_discriminator_equals_fc_on_concatenation():
    disc = Discriminator(channels=8, hidden=5)
    query_vectors, prototypes = torch.randn(2, 6, 8), torch.randn(2, 3, 8)
    concat = torch.cat(
        [
            query_vectors[:, None].expand(-1, 3, -1, -1),
            prototypes[:, :, None].expand(-1, -1, 6, -1),
        ],
        -1,
    )
    expected = torch.sigmoid(disc.fc2(torch.relu(disc.fc1(concat)))).squeeze(-1)
    assert torch.allclose(disc(query_vectors, prototypes), expected, atol=1e-6)
