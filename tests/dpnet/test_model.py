"""DPNet end to end: k-shot averaging, the K' = 0 fallback, gradients, shapes and bad input."""

from __future__ import annotations

import pytest
import torch

from dpnet.config import preset
from dpnet.model import DPNet, build_dpnet, count_parameters
from dpnet.model.losses import dpnet_losses
from dpnet_runtime.errors import InputError

SIZE = 65  # small input keeps these tests fast; the network is fully convolutional


@pytest.fixture(scope="module")
def tiny() -> DPNet:
    torch.manual_seed(0)
    return build_dpnet(preset("tiny"), pretrained_backbone=False).eval()


def _episode(batch: int, shots: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, shots, 3, SIZE, SIZE, generator=gen)
    masks = torch.zeros(batch, shots, SIZE, SIZE)
    masks[..., 16:48, 20:50] = 1.0
    masks[..., 10:12, :] = 255.0
    return images, masks, torch.randn(batch, 3, SIZE, SIZE, generator=gen)


@torch.no_grad()
def test_eval_output_shape(tiny):
    images, masks, query = _episode(2, 3)
    assert tiny(images, masks, query).shape == (2, 2, SIZE, SIZE)


@torch.no_grad()
def test_identical_shots_equal_one_shot(tiny):
    images, masks, query = _episode(1, 1)
    one = tiny(images, masks, query)
    five = tiny(images.expand(-1, 5, -1, -1, -1), masks.expand(-1, 5, -1, -1), query)
    assert torch.allclose(one, five, atol=1e-5)


@torch.no_grad()
def test_shot_order_does_not_matter(tiny):
    images, masks, query = _episode(2, 4, seed=1)
    masks[:, 1, 30:60, 0:30] = 1.0
    order = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(
        tiny(images, masks, query), tiny(images[:, order], masks[:, order], query), atol=1e-5
    )


@torch.no_grad()
def test_empty_confident_set_falls_back_to_prototype(tiny):
    """beta = 1 rejects every location (K' = 0): P_q = P, exactly the no-pseudo-prototype net."""
    images, masks, query = _episode(2, 2, seed=2)
    support = tiny.encode_support(images, masks)
    fallback = tiny.segment(query, support, beta=1.0)
    assert fallback.selected is not None and fallback.selected.sum() == 0
    assert torch.isfinite(fallback.logits).all()
    baseline = DPNet(tiny.config.replace(pseudo_prototype="none")).eval()
    baseline.load_state_dict(tiny.state_dict(), strict=False)
    expected = baseline.segment(query, baseline.encode_support(images, masks)).logits
    assert torch.allclose(fallback.logits, expected, atol=1e-5)


@torch.no_grad()
def test_all_background_support_gives_finite_output(tiny):
    images, masks, query = _episode(1, 2)
    masks.zero_()
    output = tiny.segment(query, tiny.encode_support(images, masks))
    assert output.confidence is not None and output.confidence.sum() == 0
    assert torch.isfinite(output.logits).all()


def test_gradients_reach_every_trainable_module_and_never_the_backbone():
    torch.manual_seed(0)
    model = build_dpnet(preset("tiny"), pretrained_backbone=False).train()
    images, masks, query = _episode(2, 2, seed=3)
    query_mask = torch.zeros(2, SIZE, SIZE, dtype=torch.long)
    query_mask[:, 20:50, 10:40] = 1
    output = model(images, masks, query)
    losses = dpnet_losses(
        output.logits,
        output.aux_logits,
        output.scores,
        output.confidence,
        query_mask,
        aux_weight=1.0,
        dis_weight=1.0,
    )
    losses.total.backward()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    for prefix in ("backbone.reduce", "discriminator", "pim", "msf", "decoder", "aux_decoder"):
        params = {n: p for n, p in trainable.items() if n.startswith(prefix)}
        assert params, prefix
        for name, param in params.items():
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert model.pim.alpha.grad is not None and model.pim.alpha.grad != 0
    for param in model.backbone.trunk_parameters():
        assert not param.requires_grad and param.grad is None
    assert losses.dis > 0


def test_frozen_trunk_stays_in_eval_mode_while_training():
    model = build_dpnet(preset("tiny"), pretrained_backbone=False).train()
    assert not model.backbone.layer3.training and not model.backbone.bn1.training
    assert model.backbone.reduce.training and model.decoder.training


def test_parameter_count_of_paper_config(capsys):
    total, trainable = count_parameters(build_dpnet(preset("paper"), pretrained_backbone=False))
    with capsys.disabled():
        print(
            f"\npaper config: {total / 1e6:.2f}M parameters "
            f"({trainable / 1e6:.2f}M trainable); paper: 19.3M"
        )
    # Pinned: docs/train.md states 19.00M (10.46M trainable); the paper's Table 1 says 19.3M,
    # and its head's layer widths are not given (docs/design.md#the-model).
    assert (total, trainable) == (19_004_806, 10_461_510)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i, m, q: (i[0], m, q), "support_images must have rank 5"),
        (lambda i, m, q: (i, m[:, :, None], q), "support_masks must have rank 4"),
        (lambda i, m, q: (i, m, q[0]), "query_image must have rank 4"),
        (lambda i, m, q: (i, m[:, :1], q), r"support_masks must be \[B, K, H, W\]"),
        (lambda i, m, q: (i, m[..., :-1], q), r"support_masks must be \[B, K, H, W\]"),
        (lambda i, m, q: (i[:, :, :1], m, q), "support_images must be"),
        (lambda i, m, q: (i, m, q[:1]), "query_image has B = 1"),
        (lambda i, m, q: (i, m * 2, q), "may only hold 0, 1 and 255"),
        (lambda i, m, q: (i, m, q[:, :2]), "query_image must be"),
    ],
    ids=[
        "images-rank",
        "masks-rank",
        "query-rank",
        "shots-mismatch",
        "mask-size",
        "channels",
        "batch-mismatch",
        "mask-values",
        "query-channels",
    ],
)
def test_bad_input_raises_value_error_naming_the_tensor(tiny, change, message):
    images, masks, query = change(*_episode(2, 2))
    with pytest.raises(InputError, match=message) as info:
        tiny(images, masks, query)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("side", [16, 17, 41, 42, 43, 9])
@pytest.mark.parametrize("kernel", [2, 4])
def test_msf_pooling_is_bit_identical_to_ceil_mode_avg_pool(side: int, kernel: int) -> None:
    # The export-friendly pooling (zero pad, full windows, divide by the covered share) must
    # give exactly PyTorch's ceil-mode numbers, so trained checkpoints keep their outputs.
    from dpnet.model.msf import ceil_avg_pool2d

    feats = torch.randn(2, 5, side, side, generator=torch.Generator().manual_seed(side))
    expected = torch.nn.functional.avg_pool2d(
        feats, kernel, kernel, ceil_mode=True, count_include_pad=False
    )
    assert torch.equal(ceil_avg_pool2d(feats, kernel), expected)
