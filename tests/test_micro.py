"""The micro-bias module and the dual loss: where the salient map looks, gradients, semi-negatives, ablation."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from synthetic import Scene, render
from trainer.backbones import build_backbone
from trainer.config import TrainConfig
from trainer.micro import decompose, micro_loss, salient_map
from trainer.moco import MoCo
from trainer.train import compute_loss

BAND = 4  # pixels either side of the true boundary


def boundary_band(truth: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` of the moving object's boundary in any frame."""
    band = np.zeros(truth.shape[1:], bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    for mask in truth.astype(np.uint8):
        edge = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        band |= cv2.dilate(edge, kernel).astype(bool)
    return band


def test_untrained_salient_map_sits_on_moving_boundaries():
    frames, truth = render(Scene(size=(112, 112), n_frames=8, object_velocity=(0.0, 3.0), object_radius=(22, 18)))
    x = torch.from_numpy(frames).permute(3, 0, 1, 2).float()[None] / 255.0
    torch.manual_seed(0)
    features = build_backbone("small").eval().forward_blocks(x)[0]  # stem: 56x56, random weights
    saliency = F.interpolate(salient_map(features)[None], size=(112, 112), mode="bilinear")[0, 0].detach().numpy()
    band = boundary_band(truth, BAND)
    mass = saliency[band].sum() / saliency.sum()
    # The band covers a quarter of the frame (0.25) and holds nearly all of the map's mass (0.96 with seed 0).
    assert band.mean() < 0.3
    assert mass > 0.8, f"only {mass:.2f} of the salient mass lies within {BAND} px of the boundary"
    assert mass > 3 * band.mean()


def test_decompose_splits_features_by_the_map():
    features = torch.zeros(1, 2, 3, 4, 4)
    features[:, 0, :, :2] = 1.0  # channel 0 lives in the top half
    saliency = torch.zeros(1, 4, 4)
    saliency[:, :2] = 1.0
    dynamic, static = decompose(features, saliency)
    assert torch.allclose(dynamic, torch.tensor([[1.0, 0.0]]), atol=1e-5)
    assert torch.allclose(static, torch.tensor([[0.0, 0.0]]), atol=1e-5)
    assert salient_map(features[:, :, :1]).abs().sum() == 0


def batch(seed: int, partner: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {name: torch.randn(4, 3, 4, 32, 32, generator=g) for name in ("query", "key", "partner", "background")}
    return out if partner else {k: v for k, v in out.items() if k not in ("partner", "background")}


def model(seed: int = 0) -> MoCo:
    torch.manual_seed(seed)
    return MoCo(build_backbone("small"), dim=16, queue_size=8, momentum=0.9, temperature=0.1)


def test_semi_negative_column_and_target():
    m = model()
    b = batch(1)
    logits, labels = m(b["query"], b["key"], b["partner"])
    assert logits.shape == (8, 1 + 1 + 8) and (labels == 0).all()
    m2 = model()
    q = m2.embed(b["query"])
    with torch.no_grad():
        m2._momentum_update()
        extra = m2.embed_key(b["partner"])
    expected = (q * extra).sum(1) / 0.1
    assert torch.allclose(logits[:4, 1], expected, atol=1e-5)


def test_background_negative_is_a_column_after_the_semi_negative():
    """compute_loss orders the extra negatives [semi-negative, background]; each is the key encoder's embedding."""
    b = batch(4)
    config = TrainConfig(cache="x", backbone="small", semi_negatives=True, background_negatives=True)
    m = model()
    logits, _ = m(b["query"], b["key"], [b["partner"], b["background"]])
    assert logits.shape == (8, 1 + 2 + 8)
    m2 = model()
    q = m2.embed(b["query"])
    with torch.no_grad():
        m2._momentum_update()
        expected = (q * m2.embed_key(b["background"])).sum(1) / 0.1
    assert torch.allclose(logits[:4, 2], expected, atol=1e-5)
    loss, _ = compute_loss(model(), b, config)
    assert torch.allclose(loss, F.cross_entropy(logits, torch.zeros(8, dtype=torch.long)), atol=1e-6)
    only_semi, _ = compute_loss(model(), b, TrainConfig(cache="x", backbone="small", semi_negatives=True))
    assert not torch.equal(loss, only_semi)


def test_gradients_reach_the_backbone_through_both_terms():
    config = TrainConfig(cache="x", backbone="small", micro=True, micro_block=1, semi_negatives=True)
    for part in ("contrastive", "micro"):
        m = model()
        b = batch(2)
        logits, labels, (q_map, k_map) = m(b["query"], b["key"], b["partner"], block=config.micro_block)
        loss = F.cross_entropy(logits, labels) if part == "contrastive" else micro_loss(q_map, k_map)
        loss.backward()
        stem = m.backbone.stem[0].weight.grad
        assert stem is not None and stem.abs().sum() > 0, part


def test_switching_parts_off_gives_the_plain_fame_loss_exactly():
    plain = TrainConfig(cache="x", backbone="small")
    m = model()
    b = batch(3, partner=False)
    logits, labels = m(b["query"], b["key"])
    reference = F.cross_entropy(logits, labels)
    for config in (plain, TrainConfig(cache="x", backbone="small", micro=False, semi_negatives=False, micro_weight=9)):
        loss, parts = compute_loss(model(), batch(3), config)
        assert torch.equal(loss, reference) and set(parts) == {"contrastive"}
    loss, parts = compute_loss(model(), batch(3), TrainConfig(cache="x", backbone="small", micro=True, micro_block=1))
    assert set(parts) == {"contrastive", "micro"} and not torch.equal(loss, reference)
    loss, _ = compute_loss(model(), batch(3), TrainConfig(cache="x", backbone="small", semi_negatives=True))
    assert not torch.equal(loss, reference)
