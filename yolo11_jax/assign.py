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

How: the top-k per box is found in two passes over chunks of consecutive anchors
(best: rows of a feature map). Pass 1 finds each (box, chunk)'s largest alignment,
either densely for all pairs (fused into the reduction: nothing of size B*M*A is
written) or sparsely, only for the chunks whose anchors' bounding box meets the
box, in a loop over blocks of such pairs whose trip count follows their number
(which also keeps every evaluated chunk's values). Pass 2 takes the alignments of
each box's k best chunks (recomputed after the dense pass, looked up after the
sparse one) and their top-k, which is exactly ``lax.top_k`` over all anchors (see
``_chunk_size``). Conflicts are resolved on the B*M*k candidates with a
scatter-max and a scatter-min.

Arithmetic is in float32 (lower-precision predictions are promoted), or in
float64 when the predictions are float64 (JAX x64 enabled).
"""

from __future__ import annotations

import functools
import math

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


def _chunk_size(n: int, k: int, hint: int | None = None) -> int:
    """Chunk length for the two-pass top-k.

    ``hint`` (the loss passes the anchor grid's row length, so that chunks are compact
    strips of one feature map) is taken when it divides ``n``. Otherwise a length near
    ``sqrt(n / k)``, which balances the two passes (``n / c`` chunk maxima, then ``k * c``
    candidates); a divisor of ``n`` if one is close, so that no padding is needed.

    The pass is exact: the ``k`` chunks with the largest maxima hold every top-k element (a
    chunk holding one has a maximum at least the k-th value, and on ties ``top_k`` prefers
    lower chunks, which hold the lower indices); searched in index order, their ``k * c``
    entries give ``lax.top_k``'s values, indices and tie-breaking."""
    if hint is not None and hint >= 1 and n % hint == 0:
        return int(hint)
    target = max(1, round((n / k) ** 0.5))
    for d in sorted(range(max(1, target // 2), 2 * target + 1), key=lambda d: abs(d - target)):
        if n % d == 0:
            return d
    return target


def _select_bit(words: jax.Array, q: jax.Array) -> jax.Array:
    """Position (0..31) of the ``q``-th set bit (0-based) of each uint32 in ``words``, for
    ``q < popcount(words)``: a binary search on the population counts of the low bits."""
    pos = jnp.zeros_like(q)
    for step in (16, 8, 4, 2, 1):
        width = (pos + step).astype(jnp.uint32)
        low = jnp.where(width >= 32, words, words & ((jnp.uint32(1) << width) - jnp.uint32(1)))
        pos = jnp.where(jax.lax.population_count(low).astype(q.dtype) <= q, pos + step, pos)
    return pos


# Slots (box, chunk) evaluated per iteration of the sparse pass, and the share of all
# (box, chunk) pairs above which the CPU takes the dense pass instead: a sparse pair costs
# several dense ones (gathers instead of streaming); measured break-even on the 2-core CPU
# at 640 px: ~14% (boxes up to 0.5 of the image; benchmarks/RESULTS.md).
_SPARSE_BLOCK = 1024
_SPARSE_MAX_FRACTION = 0.12
# Arrays up to this many elements are indexed by flat int32 offsets (faster gathers and
# scatters on the CPU); above it, by one index per axis.
_FLAT_INDEX_LIMIT = 2**31
METHODS = ("auto", "dense", "sparse")


@functools.partial(jax.jit, static_argnames=("topk", "alpha", "beta", "eps", "chunk_size", "method",
                                             "scores_per_anchor"))
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
    chunk_size: int | None = None,
    method: str = "auto",
    scores_per_anchor: bool = False,
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
      chunk_size: anchors per chunk of the two-pass top-k (a speed hint; results do not
        depend on it). Best a row length of the anchor grid, so that a chunk is a compact
        strip of one feature map: ``detection_loss`` passes the coarsest map's width (20 at
        640 px). Default (or when it does not divide ``A``): near ``sqrt(A / topk)``.
      method: how the per-chunk maxima of the alignment are found (results are identical):
        ``'dense'`` evaluates all ``B*M*A`` (box, anchor) pairs in one fused pass (best on
        GPUs); ``'sparse'`` evaluates only the chunks whose anchors' bounding box meets the
        box, in blocks of a loop whose trip count follows the number of such chunks (best
        on CPUs, where most dense pairs lie outside their box; it keeps their values in a
        buffer of 12% of ``B*M*A`` floats under ``'auto'``, 2 MB at B=16, M=32, 640 px,
        and of all ``B*M*A`` when asked for by name); ``'auto'`` takes ``'sparse'`` on the
        CPU when at most 12% of the (box, chunk) pairs need evaluating (decided at run
        time, per batch), ``'dense'`` otherwise and on other platforms.
      scores_per_anchor: return the soft targets as one value per anchor, ``(B, A)``, the
        assigned class's (zero for background), instead of ``(B, A, C)``:
        ``scores == one_hot(max(labels, 0), C) * value[..., None]``. For callers that build
        the one-hot inside a fused computation (``detection_loss``), so that no
        ``(B, A, C)`` array is written.

    Returns:
      ``labels (B, A)`` int32 class id, -1 for background;
      ``bboxes (B, A, 4)`` the assigned box (xyxy pixels), zeros for background;
      ``scores (B, A, C)`` soft targets, zero except at the assigned class (``(B, A)`` with
      ``scores_per_anchor``);
      ``fg_mask (B, A)`` bool.
      No gradient flows through any output.
    """
    if method not in METHODS:
        raise ValueError(f"unknown assignment method {method!r}; choose one of {METHODS}")
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

    def inside(ax, ay, gt, valid):
        """The notebook's ``min(a - x1y1, x2y2 - a) > 0`` for anchors ``(ax, ay)`` and boxes
        ``gt = (x1, y1, x2, y2)``, and ``valid``; everything broadcasts. Written per side: a
        trailing axis of 2 costs XLA more than the whole IoU."""
        gx1, gy1, gx2, gy2 = gt
        return (ax - gx1 > 0) & (ay - gy1 > 0) & (gx2 - ax > 0) & (gy2 - ay > 0) & valid

    def alignment(s, boxes, in_gt, gt):
        """``s ** alpha * iou ** beta`` where ``in_gt``, else 0."""
        iou = jnp.clip(_iou_broadcast(boxes, jnp.stack(gt, -1), "iou", 1e-7), 0.0, 1.0)
        return jnp.where(in_gt, _power(s, alpha) * _power(iou, beta), 0.0)

    flat_scores = pred_scores.reshape(-1)
    flat_index_ok = pred_scores.size < _FLAT_INDEX_LIMIT

    def scores_at(bi, ai, labels, in_gt):
        """``pred_scores[bi, ai, labels]`` where ``in_gt``. Elsewhere the value is masked out
        later, so the read goes to element 0: a cache hit instead of a miss (most anchors
        gathered in a chunk lie outside the box; this halves the time of the gathers)."""
        if not flat_index_ok:
            return pred_scores[bi, ai, labels]
        return flat_scores[jnp.where(in_gt, (bi * a + ai) * c + labels, 0)]

    def alignment_at(idx):
        """Alignment of the boxes with the anchors ``idx`` (``None``: all A, else (B, M, N))."""
        gt = (x1, y1, x2, y2)
        if idx is None:
            ax, ay = anchor_points[None, None, :, 0], anchor_points[None, None, :, 1]   # (1, 1, A)
            # s[b, m, a] = pred_scores[b, a, gt_labels[b, m]]: gather along classes, then
            # transpose the (B, A, M) result, not the (B, A, C) scores.
            s = jnp.swapaxes(jnp.take_along_axis(pred_scores, safe_labels[:, None, :], axis=2), 1, 2)
            return alignment(s, pred_bboxes[:, None, :, :], inside(ax, ay, gt, gt_mask[:, :, None]), gt)
        ax, ay = anchor_points[idx, 0], anchor_points[idx, 1]                           # (B, M, N)
        bi = jnp.arange(b)[:, None, None]
        in_gt = inside(ax, ay, gt, gt_mask[:, :, None])
        s = scores_at(bi, idx, safe_labels[:, :, None], in_gt)
        return alignment(s, pred_bboxes[bi, idx], in_gt, gt)                            # boxes (B, M, N, 4)

    # Top-k anchors per box among those with positive alignment: (B, M, k) candidates. The
    # alignment is only reduced to chunk maxima (nothing of size B*M*A is written); the k
    # best chunks per box are recomputed and searched.
    chunk = _chunk_size(a, k, chunk_size)
    n_chunks = -(-a // chunk)
    if n_chunks <= 2 * k:
        top_vals, top_idx = jax.lax.top_k(alignment_at(None), k)
    else:
        pad = n_chunks * chunk - a

        def top_in_chunks(chunk_max, chunk_values=None):
            """The top-k of each box, searched in its k best chunks: ``chunk_values(chunk_ids)``
            gives their ``(B, M, k, chunk)`` alignments; by default they are recomputed
            (B * M * k * chunk pairs).

            On the CPU the candidates are laid out for XLA's TopK, a partial sort (a heap of
            k) whose cost is mostly in replacing its smallest element, i.e. in how early the
            large values come: the k chunk maxima first (each taken out of its chunk), then
            the chunks, best first. That is ~2.5x faster than anchor order on real
            candidates. The order decides ties among equal values where anchor order should
            (``lax.top_k``); it matters only when a positive value at the k-th place is
            shared with a candidate left out, and then the search is redone in anchor order."""
            chunk_top, chunk_ids = jax.lax.top_k(chunk_max, k)                           # (B, M, k), best first

            def search(chunk_ids, maxima_first=False):
                cand_idx = (chunk_ids[..., None] * chunk + jnp.arange(chunk)).reshape(b, m, k * chunk)
                if chunk_values is None:
                    cand = alignment_at(jnp.minimum(cand_idx, a - 1))
                else:
                    cand = chunk_values(chunk_ids).reshape(b, m, k * chunk)
                cand = jnp.where(cand_idx < a, cand, -jnp.inf)
                if maxima_first:
                    # Each chunk's first element equal to its maximum moves to the front (where
                    # none matches, as may happen if the dense pass rounds differently from the
                    # recomputation, nothing moves: every candidate stays exactly once).
                    by_chunk = cand.reshape(b, m, k, chunk)
                    lane = jnp.arange(chunk)
                    first = jnp.min(jnp.where(by_chunk == chunk_top[..., None], lane, chunk), axis=-1)
                    front = jnp.where(first < chunk, chunk_top, -jnp.inf)                # (B, M, k)
                    rest = jnp.where(lane == first[..., None], -jnp.inf, by_chunk).reshape(b, m, k * chunk)
                    cand = jnp.concatenate([front, rest], axis=-1)
                    cand_idx = jnp.concatenate([chunk_ids * chunk + jnp.minimum(first, chunk - 1), cand_idx], axis=-1)
                vals, pos = jax.lax.top_k(cand, k)
                return vals, jnp.take_along_axis(cand_idx, pos, axis=-1), cand

            def in_anchor_order():
                return search(jnp.sort(chunk_ids, axis=-1))[:2]

            def best_first():
                vals, idx, cand = search(chunk_ids, maxima_first=True)
                # (min, not vals[..., -1]: a second slice of TopK's sort would stop XLA from
                # rewriting it into its TopK call)
                kth = jnp.min(vals, axis=-1, keepdims=True)
                tied_out = (kth > 0) & (jnp.sum(cand == kth, axis=-1, keepdims=True)
                                        > jnp.sum(vals == kth, axis=-1, keepdims=True))
                return jax.lax.cond(jnp.any(tied_out), in_anchor_order, lambda: (vals, idx))

            # Off the CPU the order does not pay for a conditional (on a GPU, a wait on the host).
            return jax.lax.platform_dependent(cpu=best_first, default=in_anchor_order)

        def top_dense():
            dense = alignment_at(None)
            if pad:
                dense = jnp.pad(dense, [(0, 0), (0, 0), (0, pad)], constant_values=-jnp.inf)
            return top_in_chunks(jnp.max(dense.reshape(b, m, n_chunks, chunk), axis=-1))

        # A chunk can hold an anchor inside a box only if the bounding box of its anchors
        # meets the box (ax - x1 > 0 implies ax > x1, so this test keeps every such chunk);
        # every other chunk's maximum is 0, as in the dense pass.
        anchors_padded = jnp.pad(anchor_points, [(0, pad), (0, 0)], constant_values=jnp.nan)
        by_chunk = anchors_padded.reshape(n_chunks, chunk, 2)
        lo, hi = jnp.nanmin(by_chunk, axis=1), jnp.nanmax(by_chunk, axis=1)        # (n_chunks, 2)
        # (B, chunks, M): the order in which the hits are numbered below.
        gx1, gy1, gx2, gy2 = (gt_bboxes[:, None, :, i] for i in range(4))               # (B, 1, M)
        hit = (gt_mask[:, None, :] & (hi[:, 0, None] > gx1) & (lo[:, 0, None] < gx2)
               & (hi[:, 1, None] > gy1) & (lo[:, 1, None] < gy2))

        def top_sparse(capacity):
            # The (box, chunk) pairs to evaluate ("slots") are numbered in (image, chunk, box)
            # order, so that neighbouring slots read the same anchors' scores and boxes (twice
            # as fast as box-major order). The hits are packed into 32-bit words (one per
            # image, chunk and 32 boxes); each word's id is repeated as many times as it has
            # hits, which gives every slot its word, and its bit is found by its rank in the
            # word. The loop's trip count follows the number of hits, not B * M * chunks.
            n_words = -(-m // 32)
            hit_bcm = jnp.pad(hit, [(0, 0), (0, 0), (0, 32 * n_words - m)])
            words = jnp.sum(hit_bcm.reshape(-1, 32).astype(jnp.uint32) << jnp.arange(32, dtype=jnp.uint32),
                            axis=-1, dtype=jnp.uint32)                                 # (B*n_chunks*n_words,)
            word_hits = jax.lax.population_count(words).astype(jnp.int32)
            word_end = jnp.cumsum(word_hits)                                           # hits up to each word
            word_start = word_end - word_hits                                          # slot of its first hit
            count = word_end[-1]
            boxes_padded = jnp.pad(pred_bboxes, [(0, 0), (0, pad), (0, 0)])

            slot_word = jnp.repeat(jnp.arange(words.shape[0], dtype=jnp.int32), word_hits,
                                   total_repeat_length=capacity)
            slot_bit = _select_bit(words[slot_word], jnp.arange(capacity, dtype=jnp.int32) - word_start[slot_word])
            slot_b = slot_word // (n_words * n_chunks)
            slot_c = (slot_word // n_words) % n_chunks
            slot_m = jnp.minimum((slot_word % n_words) * 32 + slot_bit, m - 1)

            def block_slots(at):
                """Image, chunk and box of the slots ``at:at + _SPARSE_BLOCK``."""
                return (jax.lax.dynamic_slice(x, (at,), (_SPARSE_BLOCK,)) for x in (slot_b, slot_c, slot_m))

            def strided_scores(at):
                """The class scores of the slots ``at:at + _SPARSE_BLOCK`` at all their chunk's
                anchors, ``(T, chunk)``: per slot a strided slice (reading them all, in a run
                the prefetcher follows, costs less than gathering only those inside the box)."""
                bi, ci, mi = block_slots(at)
                return jax.vmap(lambda bb, st, label: jax.lax.dynamic_slice(
                    pred_scores, (bb, st, label), (1, chunk, 1))[0, :, 0])(bi, ci * chunk, safe_labels[bi, mi])

            def block(i, carry):
                maxima, slot_values, scores_ahead = carry
                at = jnp.int32(i * _SPARSE_BLOCK)
                j = at + jnp.arange(_SPARSE_BLOCK, dtype=jnp.int32)
                bi, ci, mi = block_slots(at)
                start = ci * chunk
                # (T, chunk, 4) predicted boxes and (T, chunk, 2) anchor points of each slot.
                boxes = jax.vmap(lambda bb, st: jax.lax.dynamic_slice(
                    boxes_padded, (bb, st, jnp.zeros_like(st)), (1, chunk, 4))[0])(bi, start)
                points = jax.vmap(lambda st: jax.lax.dynamic_slice(
                    anchors_padded, (st, jnp.zeros_like(st)), (chunk, 2)))(start)
                gt_rows = gt_bboxes.reshape(b * m, 4)[bi * m + mi]       # one gather of rows: 4 separate ones cost more
                gt = tuple(gt_rows[:, col, None] for col in range(4))
                in_gt = inside(points[..., 0], points[..., 1], gt, True)                  # (T, chunk)
                if pad:  # the last chunk runs past the anchors: gather (no padded copy of the scores)
                    ai = jnp.minimum(start[:, None] + jnp.arange(chunk), a - 1)
                    s = scores_at(bi[:, None], ai, safe_labels[bi, mi][:, None], in_gt)
                else:
                    # Read one block ahead, into the loop's carry: a separate pass of loads only,
                    # which keeps more cache misses in flight than loads spread through the
                    # arithmetic (-0.35 ms of ~6.5 at B=16, 640 px); this block's were read by
                    # the previous iteration (or before the loop).
                    s, scores_ahead = scores_ahead, strided_scores(at + _SPARSE_BLOCK)
                vals = alignment(s, boxes, in_gt, gt)
                dest = jnp.where(j < count, (bi * m + mi) * n_chunks + ci, b * m * n_chunks)
                return (maxima.at[dest].set(jnp.max(vals, axis=-1), mode="drop"),
                        jax.lax.dynamic_update_slice(slot_values, vals, (at, jnp.int32(0))), scores_ahead)

            n_blocks = (count + _SPARSE_BLOCK - 1) // _SPARSE_BLOCK
            # (the last iteration reads a block past the slots: dynamic_slice clamps it, unused)
            first_scores = jnp.zeros((0, chunk), dtype) if pad else strided_scores(jnp.int32(0))
            maxima, slot_values, _ = jax.lax.fori_loop(
                0, n_blocks, block,
                (jnp.zeros(b * m * n_chunks, dtype), jnp.zeros((capacity, chunk), dtype), first_scores))

            def stored_values(chunk_ids):
                """The loop's values of the chunks ``chunk_ids`` (B, M, k): slot of (b, m, c)
                from the words (hits before it), zeros where the pair was not hit."""
                mi = jnp.arange(m, dtype=jnp.int32)[None, :, None]
                w = (jnp.arange(b)[:, None, None] * n_chunks + chunk_ids) * n_words + mi // 32
                bit = (mi % 32).astype(jnp.uint32)
                word = words[w]
                was_hit = ((word >> bit) & jnp.uint32(1)) == 1
                before = jax.lax.population_count(word & ((jnp.uint32(1) << bit) - jnp.uint32(1)))
                slot = jnp.where(was_hit, word_start[w] + before.astype(jnp.int32), 0)
                return jnp.where(was_hit[..., None], slot_values[slot], 0.0)

            return top_in_chunks(maxima.reshape(b, m, n_chunks), stored_values)

        # Slots the loop's value buffer holds: every (box, chunk) pair when asked for the
        # sparse pass, the share up to which 'auto' takes it otherwise.
        def slots_for(fraction):
            return -(-min(hit.size, math.ceil(fraction * hit.size)) // _SPARSE_BLOCK) * _SPARSE_BLOCK

        if method == "dense":
            top_vals, top_idx = top_dense()
        elif method == "sparse":
            top_vals, top_idx = top_sparse(slots_for(1.0))
        else:
            sparse_enough = jnp.sum(hit) <= _SPARSE_MAX_FRACTION * hit.size
            top_vals, top_idx = jax.lax.platform_dependent(
                cpu=lambda: jax.lax.cond(sparse_enough, lambda: top_sparse(slots_for(_SPARSE_MAX_FRACTION)),
                                         top_dense),
                default=top_dense)
    selected = top_vals > 0
    top_vals = jnp.where(selected, top_vals, 0.0)

    # Conflicts, on the B*M*k candidates instead of the dense (B, M, A) array: an anchor's
    # alignment is the largest among the boxes that selected it (scatter-max), and it goes to
    # the first such box reaching that value (scatter-min of the box index), as argmax over M.
    bi = jnp.arange(b)[:, None, None]
    mi = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32)[None, :, None], top_idx.shape)
    max_alignment = jnp.zeros((b, a), dtype).at[bi, top_idx].max(top_vals)                  # (B, A)
    is_best = selected & (top_vals == max_alignment[bi, top_idx])
    best_box = jnp.full((b, a), m, jnp.int32).at[bi, top_idx].min(jnp.where(is_best, mi, m))  # m: none
    assigned_gt = jnp.where(best_box == m, 0, best_box)                                    # (B, A)
    fg_mask = ~(max_alignment < eps)

    flat_gt = jnp.arange(b, dtype=jnp.int32)[:, None] * m + assigned_gt                      # (B, A)
    labels = jnp.where(fg_mask, safe_labels.reshape(-1)[flat_gt], -1)
    bboxes = jnp.where(fg_mask[:, :, None], gt_bboxes.reshape(b * m, 4)[flat_gt], 0.0)

    # Soft scores: zeros, and at each foreground anchor's class ``t / (max fg t + eps)``,
    # written by the one selected candidate the anchor went to (a box's selected anchors are
    # distinct). A scatter of B*M*k values into zeros: on the CPU the zeros are filled while
    # the search runs, instead of a (B, A, C) one-hot product after it (-0.2 ms of ~6.5 at
    # B=16, 640 px).
    fg_max = jnp.max(jnp.where(fg_mask, max_alignment, 0.0), axis=1, keepdims=True)  # (B, 1)
    if scores_per_anchor:
        return labels, bboxes, jnp.where(fg_mask, max_alignment / (fg_max + eps), 0.0), fg_mask
    won = selected & (best_box[bi, top_idx] == mi) & fg_mask[bi, top_idx]            # (B, M, k)
    value = (top_vals / (fg_max[:, :, None] + eps)).reshape(-1)
    if b * a * c + top_idx.size < _FLAT_INDEX_LIMIT:
        # (the candidates that did not win go to distinct places past the end, dropped)
        at = jnp.where(won, (bi * a + top_idx) * c + safe_labels[:, :, None],
                       b * a * c + jnp.arange(top_idx.size, dtype=jnp.int32).reshape(top_idx.shape))
        scores = jnp.zeros(b * a * c, dtype).at[at.reshape(-1)].set(
            value, mode="drop", unique_indices=True).reshape(b, a, c)
    else:
        scores = jnp.zeros((b, a, c), dtype).at[
            jnp.broadcast_to(bi, top_idx.shape), jnp.where(won, top_idx, a),
            jnp.broadcast_to(safe_labels[:, :, None], top_idx.shape)].set(
            value.reshape(top_idx.shape), mode="drop")
    return labels, bboxes, scores, fg_mask
