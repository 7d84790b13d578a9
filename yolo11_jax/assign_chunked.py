"""The Task-Aligned assigner without dense ``(B, M, A)`` arrays: a speed option, mostly for CPUs.

``task_aligned_assign_chunked`` returns exactly what the spec, ``assign.task_aligned_assign``,
returns (tested bit for bit), computed differently:

* The top-k per box is found in two passes over chunks of ``chunk`` consecutive anchors
  (best: strips of one row of a feature map). Pass 1 reduces the alignment to each
  (box, chunk)'s maximum. Pass 2 takes each box's ``k`` best chunks and their top-k. The
  ``k`` chunks of largest maxima hold every element of the top-k over all anchors (a chunk
  holding one has a maximum at least the k-th value; on ties ``top_k`` prefers lower chunks,
  which hold lower indices), so searching them in index order gives ``lax.top_k``'s values,
  indices and tie-breaking.
* Pass 1 is either ``'dense'``: every (box, anchor) pair, fused into the reduction, so
  nothing of size ``B*M*A`` is written; or ``'sparse'``: only the (box, chunk) pairs whose
  chunk can hold a candidate of the box, in a loop whose trip count follows their number
  (the values it computes are kept for pass 2).
* Conflicts are resolved on the ``B*M*k`` selected candidates with a scatter-max and a
  scatter-min instead of an ``argmax`` over dense arrays.

The sparse pass skips a chunk when the bounding box of its anchors does not meet the
ground-truth box, which is right only if every candidate of a box lies strictly inside it.
The spec's :func:`~yolo11_jax.assign.candidate_mask` is probed for that property whenever
this function is traced (:func:`check_candidate_rule`); a spec whose candidate rule selects
anchors outside their box (a centre radius, boxes enlarged to a minimum size, ...) makes
this function raise instead of silently losing candidates. The candidate test and the
alignment metric themselves are the spec's functions, called on the chunks.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from yolo11_jax import assign

METHODS = ("dense", "sparse")
_SPARSE_BLOCK = 1024  # (box, chunk) pairs evaluated per iteration of the sparse loop


def chunk_size_for(num_anchors: int, k: int, hint: int | None = None) -> int:
    """Chunk length: ``hint`` if it divides ``num_anchors`` (the loss passes the anchor grid's
    row length, so that chunks are strips of one feature map), else a length near
    ``sqrt(num_anchors / k)``, which balances the two passes (``A / c`` chunk maxima, then
    ``k * c`` candidates), preferring a divisor of ``num_anchors`` (no padding)."""
    if hint is not None and hint >= 1 and num_anchors % hint == 0:
        return int(hint)
    target = max(1, round((num_anchors / k) ** 0.5))
    for d in sorted(range(max(1, target // 2), 2 * target + 1), key=lambda d: abs(d - target)):
        if num_anchors % d == 0:
            return d
    return target


_checked_rules: dict = {}


def check_candidate_rule() -> None:
    """Raise ``ValueError`` unless the spec's ``assign.candidate_mask`` selects only anchors
    strictly inside their box, the assumption of the sparse pass. Probed on a fine grid of
    anchors around boxes of 1 to 200 px (tiny ones included) and on their edges."""
    rule = assign.candidate_mask
    if rule in _checked_rules:
        if _checked_rules[rule]:
            raise ValueError(_checked_rules[rule])
        return
    boxes = np.array([[100, 100, 101, 101], [100, 100, 104, 102], [50, 60, 62, 66], [20, 30, 220, 130],
                      [100.5, 100.5, 116.5, 108.5]], np.float32)
    grid = np.arange(-40.0, 260.0, 0.5, dtype=np.float32)
    anchors = np.stack(np.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2)
    with jax.ensure_compile_time_eval():  # concrete values, also while a caller is being traced
        cand = np.asarray(rule(jnp.asarray(anchors), jnp.asarray(boxes), jnp.ones(len(boxes), bool)))
    ax, ay = anchors[None, :, 0], anchors[None, :, 1]
    inside = (ax > boxes[:, 0:1]) & (ay > boxes[:, 1:2]) & (ax < boxes[:, 2:3]) & (ay < boxes[:, 3:4])
    outside = cand & ~inside
    problem = ""
    if outside.any():
        g, n = np.argwhere(outside)[0]
        problem = (f"assign_chunked: the spec's candidate rule (assign.candidate_mask) selects anchors outside "
                   f"their box (e.g. anchor {anchors[n].tolist()} for box {boxes[g].tolist()}); the sparse pass "
                   "skips chunks that do not meet the box, so it would lose those candidates. Use "
                   "assign.task_aligned_assign, or method='dense' after adapting the sparse pass.")
    _checked_rules[rule] = problem
    if problem:
        raise ValueError(problem)


@functools.partial(jax.jit, static_argnames=("topk", "alpha", "beta", "eps", "chunk_size", "method"))
def task_aligned_assign_chunked(
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
    chunk_size: int | None = None,
    method: str = "dense",
) -> assign.Assignment:
    """``assign.task_aligned_assign``'s result (same arguments and outputs), computed by chunks.

    Args:
      chunk_size: anchors per chunk; results do not depend on it. Best a row length of the
        anchor grid (``anchors.row_chunk_size``). Default, or when it does not divide ``A``:
        near ``sqrt(A / topk)``.
      method: ``'dense'`` or ``'sparse'`` pass 1 (see the module docstring); the sparse pass
        requires the spec's candidate rule to select only anchors inside their box.
    """
    if method not in METHODS:
        raise ValueError(f"unknown assignment method {method!r}; choose one of {METHODS}")
    if method == "sparse":
        check_candidate_rule()
    dtype = jnp.result_type(pred_scores, pred_bboxes, jnp.float32)
    pred_scores = jax.lax.stop_gradient(jnp.asarray(pred_scores, dtype))
    pred_bboxes = jax.lax.stop_gradient(jnp.asarray(pred_bboxes, dtype))
    gt_bboxes, anchor_points = jnp.asarray(gt_bboxes, dtype), jnp.asarray(anchor_points, dtype)
    b, a, c = pred_scores.shape
    m = gt_bboxes.shape[1]
    k = min(topk, a)
    chunk = chunk_size_for(a, k, chunk_size)
    n_chunks = -(-a // chunk)
    if n_chunks <= 2 * k:  # too few chunks for two passes to pay: the spec itself
        return assign.task_aligned_assign.__wrapped__(pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes,
                                                      gt_mask, topk=topk, alpha=alpha, beta=beta, eps=eps)
    gt_mask = jnp.asarray(gt_mask, bool)
    gt_labels = jnp.where(gt_mask, jnp.asarray(gt_labels, jnp.int32), 0)
    pad = n_chunks * chunk - a
    bi = jnp.arange(b)[:, None, None]

    def alignment_at(anchor_idx):
        """Alignment of every box with the anchors ``anchor_idx (B, M, N)``: ``(B, M, N)``."""
        candidates = assign.candidate_mask(anchor_points[anchor_idx], gt_bboxes, gt_mask)
        scores = pred_scores[bi, jnp.where(candidates, anchor_idx, 0), gt_labels[:, :, None]]
        return assign.alignment_metric(scores, pred_bboxes[bi, anchor_idx], gt_bboxes[:, :, None, :], candidates,
                                       alpha, beta)

    def dense_maxima():
        """``(B, M, n_chunks)`` chunk maxima from every pair (fused: nothing B*M*A is kept)."""
        candidates = assign.candidate_mask(anchor_points, gt_bboxes, gt_mask)
        scores = jnp.swapaxes(jnp.take_along_axis(pred_scores, gt_labels[:, None, :], axis=2), 1, 2)
        align = assign.alignment_metric(scores, pred_bboxes[:, None], gt_bboxes[:, :, None], candidates, alpha, beta)
        align = jnp.pad(align, [(0, 0), (0, 0), (0, pad)], constant_values=-jnp.inf)
        return jnp.max(align.reshape(b, m, n_chunks, chunk), axis=-1)

    def sparse_maxima():
        """Chunk maxima evaluating only the (box, chunk) pairs whose chunk meets the box, and
        ``values_of(chunk_ids (B, M, k)) -> (B, M, k, chunk)``, those pairs' stored values."""
        anchors_padded = jnp.pad(anchor_points, [(0, pad), (0, 0)], constant_values=jnp.nan)
        by_chunk = anchors_padded.reshape(n_chunks, chunk, 2)
        lo, hi = jnp.nanmin(by_chunk, axis=1), jnp.nanmax(by_chunk, axis=1)              # (n_chunks, 2)
        gx1, gy1, gx2, gy2 = (gt_bboxes[:, None, :, i] for i in range(4))                 # (B, 1, M)
        hit = (gt_mask[:, None, :] & (hi[:, 0, None] > gx1) & (lo[:, 0, None] < gx2)
               & (hi[:, 1, None] > gy1) & (lo[:, 1, None] < gy2)).reshape(-1)            # (B * n_chunks * M,)
        # The hit pairs ("slots") in (image, chunk, box) order: neighbouring slots read the same anchors.
        capacity = -(-hit.size // _SPARSE_BLOCK) * _SPARSE_BLOCK
        (pair,) = jnp.nonzero(hit, size=capacity, fill_value=0)
        count = jnp.sum(hit, dtype=jnp.int32)
        slot_of_pair = jnp.cumsum(hit, dtype=jnp.int32) - 1
        slot_b, slot_c, slot_m = pair // (n_chunks * m), (pair // m) % n_chunks, pair % m
        boxes_padded = jnp.pad(pred_bboxes, [(0, 0), (0, pad), (0, 0)])

        def block(i, carry):
            maxima, values = carry
            at = i * _SPARSE_BLOCK
            sb, sc, sm = (jax.lax.dynamic_slice(x, (at,), (_SPARSE_BLOCK,)) for x in (slot_b, slot_c, slot_m))
            anchor_idx = sc[:, None] * chunk + jnp.arange(chunk)                               # (T, chunk)
            gt_rows = gt_bboxes[sb, sm]                                                        # (T, 4)
            candidates = assign.candidate_mask(anchors_padded[anchor_idx], gt_rows, jnp.ones_like(sb, bool))
            scores = pred_scores[sb[:, None], jnp.where(candidates, anchor_idx, 0), gt_labels[sb, sm][:, None]]
            vals = assign.alignment_metric(scores, boxes_padded[sb[:, None], anchor_idx], gt_rows[:, None, :],
                                           candidates, alpha, beta)                            # (T, chunk)
            live = at + jnp.arange(_SPARSE_BLOCK) < count
            dest = jnp.where(live, (sb * m + sm) * n_chunks + sc, b * m * n_chunks)
            return (maxima.at[dest].set(jnp.max(vals, axis=-1), mode="drop"),
                    jax.lax.dynamic_update_slice(values, vals, (at, 0)))

        maxima, values = jax.lax.fori_loop(
            0, (count + _SPARSE_BLOCK - 1) // _SPARSE_BLOCK, block,
            (jnp.zeros(b * m * n_chunks, dtype), jnp.zeros((capacity, chunk), dtype)))

        def values_of(chunk_ids):
            p = (bi * n_chunks + chunk_ids) * m + jnp.arange(m)[None, :, None]                # (B, M, k)
            was_hit = hit[p]
            return jnp.where(was_hit[..., None], values[jnp.where(was_hit, slot_of_pair[p], 0)], 0.0)

        return maxima.reshape(b, m, n_chunks), values_of

    if method == "dense":
        maxima, values_of = dense_maxima(), None
    else:
        maxima, values_of = sparse_maxima()

    # Pass 2: the top-k among each box's k best chunks, searched in anchor order.
    _, chunk_ids = jax.lax.top_k(maxima, k)
    chunk_ids = jnp.sort(chunk_ids, axis=-1)                                                  # (B, M, k)
    cand_idx = (chunk_ids[..., None] * chunk + jnp.arange(chunk)).reshape(b, m, k * chunk)
    if values_of is None:
        cand = alignment_at(jnp.minimum(cand_idx, a - 1))
    else:
        cand = values_of(chunk_ids).reshape(b, m, k * chunk)
    cand = jnp.where(cand_idx < a, cand, -jnp.inf)
    top_vals, pos = jax.lax.top_k(cand, k)
    top_idx = jnp.take_along_axis(cand_idx, pos, axis=-1)                                     # (B, M, k)
    selected = top_vals > 0
    top_vals = jnp.where(selected, top_vals, 0.0)

    # Conflicts on the B*M*k candidates: an anchor's alignment is the largest among the boxes that
    # selected it (scatter-max), and it goes to the first box reaching it (scatter-min), as argmax.
    mi = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32)[None, :, None], top_idx.shape)
    max_alignment = jnp.zeros((b, a), dtype).at[bi, top_idx].max(top_vals)                   # (B, A)
    is_best = selected & (top_vals == max_alignment[bi, top_idx])
    best_box = jnp.full((b, a), m, jnp.int32).at[bi, top_idx].min(jnp.where(is_best, mi, m))
    assigned_gt = jnp.where(best_box == m, 0, best_box)
    fg_mask = ~(max_alignment < eps)

    labels = jnp.where(fg_mask, jnp.take_along_axis(gt_labels, assigned_gt, axis=1), -1)
    bboxes = jnp.where(fg_mask[..., None], jnp.take_along_axis(gt_bboxes, assigned_gt[..., None], axis=1), 0.0)
    return assign.Assignment(labels, bboxes, assign.soft_scores(labels, fg_mask, max_alignment, c, eps), fg_mask)


def chunked_assigner(feat_sizes=None, method: str = "dense"):
    """:func:`task_aligned_assign_chunked` as an assigner for ``loss.detection_loss(assigner=...)``:
    chunks are rows of the anchor grid of ``feat_sizes`` (``[(H, W), ...]`` per level), if given."""
    from yolo11_jax.anchors import row_chunk_size

    if method not in METHODS:
        raise ValueError(f"unknown assignment method {method!r}; choose one of {METHODS}")
    hint = row_chunk_size(feat_sizes) if feat_sizes else None
    return functools.partial(task_aligned_assign_chunked, chunk_size=hint, method=method)
