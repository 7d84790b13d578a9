"""Task-Aligned label assignment (TAL), batched and jit-able.

One computation over the whole padded batch, no Python loop over images or
boxes. It reproduces the notebook's ``TaskAlignedAssigner.assign`` called image
by image on the unpadded boxes:

1. anchor ``a`` lies inside box ``g`` when ``min(a - x1y1, x2y2 - a) > 0``;
2. alignment ``t = s ** alpha * iou ** beta``, with ``s`` the predicted score
   of the box's class and ``iou`` the predicted box's IoU, clamped to [0, 1];
   zero outside the box (and for padding boxes);
3. each box keeps its ``k = min(topk, #anchors with t > 0)`` best anchors;
4. an anchor claimed by several boxes goes to the highest alignment (the first
   such box on exact ties, as ``argmax``);
5. background where that maximum is ``< eps``;
6. soft class targets ``t / (max t over the image's foreground + eps)``.

Only membership of the top-k set matters. Exact ties in alignment at the k-th
place are broken towards the lower anchor index (``lax.top_k``); the notebook
leaves that order to ``torch.topk``.

Arithmetic is in float32 (lower-precision predictions are promoted), or in
float64 when the predictions are float64 (JAX x64 enabled).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from yolo11_jax.iou import _iou_broadcast


def _power(x: jax.Array, p: float) -> jax.Array:
    """``x ** p``; an integral ``p`` (the notebook's alpha 1 and beta 6) takes repeated
    multiplication, several times cheaper than ``exp(p * log(x))``."""
    if float(p) == 1.0:
        return x
    if float(p).is_integer() and 0 < p <= 16:
        return jax.lax.integer_pow(x, int(p))
    return jnp.power(x, p)


def _chunk_size(n: int, k: int) -> int:
    """Chunk length for the two-pass top-k: near ``sqrt(n / k)``, which balances the two
    passes (``n / c`` chunk maxima, then ``k * c`` candidates); a divisor of ``n`` if one is
    close, so that no padding is needed.

    The pass is exact: the ``k`` chunks with the largest maxima hold every top-k element (a
    chunk holding one has a maximum at least the k-th value, and on ties ``top_k`` prefers
    lower chunks, which hold the lower indices); searched in index order, their ``k * c``
    entries give ``lax.top_k``'s values, indices and tie-breaking."""
    target = max(1, round((n / k) ** 0.5))
    for d in sorted(range(max(1, target // 2), 2 * target + 1), key=lambda d: abs(d - target)):
        if n % d == 0:
            return d
    return target


@functools.partial(jax.jit, static_argnames=("topk", "alpha", "beta", "eps"))
def task_aligned_assign(
    pred_scores: jax.Array,
    pred_bboxes: jax.Array,
    anchor_points: jax.Array,
    gt_labels: jax.Array,
    gt_bboxes: jax.Array,
    gt_mask: jax.Array,
    *,
    topk: int = 13,
    alpha: float = 1.0,
    beta: float = 6.0,
    eps: float = 1e-9,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Assign ground truth to anchors for a padded batch.

    Args:
      pred_scores: ``(B, A, C)`` class probabilities (after sigmoid).
      pred_bboxes: ``(B, A, 4)`` predicted boxes, xyxy pixels.
      anchor_points: ``(A, 2)`` anchor centres ``(x, y)`` in pixels.
      gt_labels: ``(B, M)`` integer class ids (any value where ``gt_mask`` is False).
      gt_bboxes: ``(B, M, 4)`` ground-truth boxes, xyxy pixels.
      gt_mask: ``(B, M)`` bool, True for real boxes, False for padding.
      topk, alpha, beta, eps: the notebook's assigner options.

    Returns:
      ``labels (B, A)`` int32 class id, -1 for background;
      ``bboxes (B, A, 4)`` the assigned box (xyxy pixels), zeros for background;
      ``scores (B, A, C)`` soft targets, zero except at the assigned class;
      ``fg_mask (B, A)`` bool.
      No gradient flows through any output.
    """
    dtype = jnp.result_type(pred_scores, pred_bboxes, jnp.float32)  # float32, or float64 under x64
    pred_scores = jax.lax.stop_gradient(pred_scores).astype(dtype)
    pred_bboxes = jax.lax.stop_gradient(pred_bboxes).astype(dtype)
    gt_bboxes = gt_bboxes.astype(dtype)
    b, a, c = pred_scores.shape
    m = gt_bboxes.shape[1]
    gt_labels = gt_labels.astype(jnp.int32)
    safe_labels = jnp.where(gt_mask, gt_labels, 0)

    # Laid out (B, M, anchors): anchors last, for top_k.
    x1, y1, x2, y2 = (gt_bboxes[:, :, i, None] for i in range(4))             # (B, M, 1)
    anchor_points = anchor_points.astype(dtype)
    k = min(topk, a)

    def alignment_at(idx):
        """Alignment of the boxes with the anchors ``idx`` (``None``: all A, else (B, M, N))."""
        if idx is None:
            ax, ay = anchor_points[None, None, :, 0], anchor_points[None, None, :, 1]   # (1, 1, A)
            # s[b, m, a] = pred_scores[b, a, gt_labels[b, m]]: gather along classes, then
            # transpose the (B, A, M) result, not the (B, A, C) scores.
            s = jnp.swapaxes(jnp.take_along_axis(pred_scores, safe_labels[:, None, :], axis=2), 1, 2)
            boxes = pred_bboxes[:, None, :, :]                                          # (B, 1, A, 4)
        else:
            ax, ay = anchor_points[idx, 0], anchor_points[idx, 1]                       # (B, M, N)
            bi = jnp.arange(b)[:, None, None]
            s = pred_scores[bi, idx, safe_labels[:, :, None]]
            boxes = pred_bboxes[bi, idx]                                                # (B, M, N, 4)
        # The notebook's min(a - x1y1, x2y2 - a) > 0, written per side: a trailing axis of 2
        # costs XLA more than the whole IoU.
        in_gt = (ax - x1 > 0) & (ay - y1 > 0) & (x2 - ax > 0) & (y2 - ay > 0) & gt_mask[:, :, None]
        iou = jnp.clip(_iou_broadcast(boxes, gt_bboxes[:, :, None, :], "iou", 1e-7), 0.0, 1.0)
        return jnp.where(in_gt, _power(s, alpha) * _power(iou, beta), 0.0)

    # Top-k anchors per box among those with positive alignment: (B, M, k) candidates. The
    # dense (B, M, A) alignment is only reduced to chunk maxima (XLA fuses the two, nothing of
    # size B*M*A is written); the k best chunks per box are recomputed and searched.
    chunk = _chunk_size(a, k)
    n_chunks = -(-a // chunk)
    if n_chunks <= 2 * k:
        top_vals, top_idx = jax.lax.top_k(alignment_at(None), k)
    else:
        dense = alignment_at(None)
        if n_chunks * chunk != a:
            dense = jnp.pad(dense, [(0, 0), (0, 0), (0, n_chunks * chunk - a)], constant_values=-jnp.inf)
        _, chunk_ids = jax.lax.top_k(jnp.max(dense.reshape(b, m, n_chunks, chunk), axis=-1), k)
        cand_idx = (jnp.sort(chunk_ids, axis=-1)[..., None] * chunk + jnp.arange(chunk)).reshape(b, m, k * chunk)
        cand = jnp.where(cand_idx < a, alignment_at(jnp.minimum(cand_idx, a - 1)), -jnp.inf)
        top_vals, pos = jax.lax.top_k(cand, k)
        top_idx = jnp.take_along_axis(cand_idx, pos, axis=-1)
    selected = top_vals > 0
    top_vals = jnp.where(selected, top_vals, 0.0)

    # Conflicts, on the B*M*k candidates instead of the dense (B, M, A) array: an anchor's
    # alignment is the largest among the boxes that selected it (scatter-max), and it goes to
    # the first such box reaching that value (scatter-min of the box index), as argmax over M.
    bi = jnp.arange(b)[:, None, None]
    mi = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32)[None, :, None], top_idx.shape)
    max_alignment = jnp.zeros((b, a), dtype).at[bi, top_idx].max(top_vals)                  # (B, A)
    is_best = selected & (top_vals == max_alignment[bi, top_idx])
    assigned_gt = jnp.full((b, a), m, jnp.int32).at[bi, top_idx].min(jnp.where(is_best, mi, m))
    assigned_gt = jnp.where(assigned_gt == m, 0, assigned_gt)                              # (B, A)
    fg_mask = ~(max_alignment < eps)

    labels = jnp.where(fg_mask, jnp.take_along_axis(safe_labels, assigned_gt, axis=1), -1)
    bboxes = jnp.take_along_axis(gt_bboxes, assigned_gt[:, :, None], axis=1)
    bboxes = jnp.where(fg_mask[:, :, None], bboxes, 0.0)

    fg_max = jnp.max(jnp.where(fg_mask, max_alignment, 0.0), axis=1, keepdims=True)  # (B, 1)
    norm_align = jnp.where(fg_mask, max_alignment / (fg_max + eps), 0.0)
    scores = jax.nn.one_hot(jnp.where(fg_mask, labels, 0), c, dtype=dtype) * norm_align[:, :, None]
    return labels, bboxes, scores, fg_mask
