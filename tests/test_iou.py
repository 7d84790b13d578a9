"""bbox_iou / bbox_iou_elementwise against reference_torch.compute_iou.

Tolerances: values max abs diff <= 1e-5; gradients relative L2 <= 1e-4 and finite.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from reference_torch import compute_iou
from yolo11_jax.iou import MODES, bbox_iou, bbox_iou_elementwise
from tests.helpers import rel_l2


def random_boxes(rng, n, scale=100.0):
    xy = rng.uniform(0, scale, (n, 2))
    wh = rng.uniform(0, scale / 2, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def degenerate_boxes():
    """Pairs (box1[i], box2[i]) covering the edge cases the loss meets."""
    b1 = np.array([
        [10, 10, 20, 30],    # identical to its partner
        [0, 0, 5, 5],        # far apart
        [10, 10, 10, 30],    # zero width
        [10, 10, 30, 10],    # zero height
        [0, 0, 0, 0],        # all-zero padding row
        [5, 5, 15, 15],      # touching edge (intersection side exactly 0)
        [0, 0, 0, 0],        # padding vs padding
        [3, 4, 3, 4],        # a point
    ], np.float32)
    b2 = np.array([
        [10, 10, 20, 30],
        [500, 600, 520, 640],
        [5, 5, 25, 25],
        [5, 5, 25, 25],
        [1, 2, 3, 4],
        [15, 5, 25, 15],
        [0, 0, 0, 0],
        [3, 4, 3, 4],
    ], np.float32)
    return b1, b2


def torch_iou(b1, b2, mode, elementwise):
    t1 = torch.tensor(b1, requires_grad=True)
    t2 = torch.tensor(b2, requires_grad=True)
    out = compute_iou(t1, t2, mode)
    if elementwise:
        out = torch.diag(out)
    weights = torch.linspace(0.5, 1.5, out.numel()).reshape(out.shape)  # a generic cotangent
    (out * weights).sum().backward()
    return out.detach().numpy(), t1.grad.numpy(), t2.grad.numpy(), weights.numpy()


def jax_iou(b1, b2, mode, elementwise, weights):
    fn = bbox_iou_elementwise if elementwise else bbox_iou
    val = fn(jnp.asarray(b1), jnp.asarray(b2), mode)
    g1, g2 = jax.grad(lambda a, b: jnp.sum(fn(a, b, mode) * weights), argnums=(0, 1))(
        jnp.asarray(b1), jnp.asarray(b2))
    return np.asarray(val), np.asarray(g1), np.asarray(g2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("elementwise", [False, True], ids=["pairwise", "elementwise"])
@pytest.mark.parametrize("case", ["random", "degenerate"])
def test_iou_matches_reference_in_value_and_gradient(mode, elementwise, case):
    rng = np.random.default_rng(0)
    if case == "random":
        b1, b2 = random_boxes(rng, 9), random_boxes(rng, 9 if elementwise else 6)
    else:
        b1, b2 = degenerate_boxes()
    want, g1_t, g2_t, w = torch_iou(b1, b2, mode, elementwise)
    got, g1_j, g2_j = jax_iou(b1, b2, mode, elementwise, w)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    for g_j, g_t in ((g1_j, g1_t), (g2_j, g2_t)):
        assert np.all(np.isfinite(g_j))
        assert rel_l2(g_j, g_t) <= 1e-4


def test_elementwise_equals_diagonal_of_pairwise():
    rng = np.random.default_rng(1)
    b1, b2 = jnp.asarray(random_boxes(rng, 12)), jnp.asarray(random_boxes(rng, 12))
    for mode in MODES:
        np.testing.assert_array_equal(np.asarray(bbox_iou_elementwise(b1, b2, mode)),
                                      np.diag(np.asarray(bbox_iou(b1, b2, mode))))


def test_ciou_alpha_carries_no_gradient():
    """With alpha under stop_gradient the CIoU gradient differs from one that differentiates it."""
    b1 = jnp.array([[0.0, 0.0, 10.0, 30.0]])
    b2 = jnp.array([[2.0, 1.0, 14.0, 20.0]])
    g = jax.grad(lambda a: bbox_iou_elementwise(a, b2, "ciou").sum())(b1)
    t1 = torch.tensor(np.asarray(b1), requires_grad=True)
    compute_iou(t1, torch.tensor(np.asarray(b2)), "ciou").sum().backward()
    np.testing.assert_allclose(np.asarray(g), t1.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_identical_boxes_give_one_and_unknown_mode_raises():
    b = jnp.array([[1.0, 2.0, 3.0, 5.0]])
    for mode in MODES:
        assert abs(float(bbox_iou(b, b, mode)[0, 0]) - 1.0) < 1e-6
    with pytest.raises(ValueError, match="unknown IoU mode"):
        bbox_iou(b, b, "siou")
