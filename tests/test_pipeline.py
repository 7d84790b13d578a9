"""The Grain input pipeline: determinism, per-process shards, augmentation, resume after kill -9,
memory that does not grow with the dataset, and Hub streaming through the real ``datasets``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolo11_jax.data import (ULTRALYTICS, Augment, DataStats, Record, RecordSource, TrainPipeline, add_counts,
                             build_dataset)
from yolo11_jax.data.augment import box_candidates, flip_lr, mosaic4, random_affine
from yolo11_jax.data.pipeline import MakeSample
from tests.helpers import subprocess_env

S = 64


@pytest.fixture(scope="module")
def shapes64():
    return build_dataset("shapes", split="train", shapes_num_images=48, shapes_img_size=S, img_size=S).examples


def _same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.multiprocess
def test_batches_are_identical_for_any_number_of_workers_and_across_runs(shapes64):
    """With the Ultralytics augmentation on: 0 (in-process threads), 1 and 2 worker processes, and
    a second run, give the same batches bit for bit."""
    def run(workers):
        pipe = TrainPipeline(shapes64, batch_size=8, img_size=S, max_boxes=12, seed=3, augment=ULTRALYTICS,
                             epochs=4, workers=workers)
        return list(pipe.dataset(6))

    first = run(0)
    assert first[0]["images"].dtype == np.uint8
    _same_batches(first, run(0))
    _same_batches(first, run(1))
    _same_batches(first, run(2))
    # the augmentation really ran: the batch is not the plain images
    plain = TrainPipeline(shapes64, batch_size=8, img_size=S, max_boxes=12, seed=3)
    assert not np.array_equal(plain.batch(0)["images"], first[0]["images"])


class CountingSource(RecordSource):
    """A RecordSource that records which records it decodes."""

    def __init__(self, base: RecordSource):
        super().__init__(base.records, img_size=base.img_size, letterbox=base.letterbox, name=base.name)
        self.decoded: list[int] = []

    def load_pil(self, index):
        self.decoded.append(int(index))
        return super().load_pil(index)


@pytest.mark.parametrize("augment,cache_images", [(Augment(), None), (Augment(), False), (ULTRALYTICS, None)],
                         ids=["plain", "plain-uncached", "ultralytics"])
def test_two_processes_together_see_exactly_the_global_batch(shapes64, augment, cache_images):
    """Process p of 2 takes rows p*B/2 .. (p+1)*B/2 - 1 of every global batch, and decodes only
    its own records (counted; with mosaic, its own records and their mosaic partners). With the
    decoded-image cache (on by default for this small index) each of them is decoded exactly once,
    although 8 steps of 8 rows over 48 records meet some records twice; without it, once a use."""
    kw = dict(batch_size=8, img_size=S, max_boxes=12, seed=1, augment=augment, epochs=3)
    whole = TrainPipeline(shapes64, **kw)
    parts = []
    for p in (0, 1):
        src = CountingSource(shapes64)
        pipe = TrainPipeline(src, shard=(p, 2), cache_images=cache_images, **kw)
        assert pipe.cache_images == (cache_images is None)
        batches = list(pipe.dataset(8))
        parts.append((src, batches))
    for step in range(8):
        want = whole.batch(step)
        got = {k: np.concatenate([parts[0][1][step][k], parts[1][1][step][k]]) for k in want}
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    from collections import Counter

    for src, batches in parts:
        own = Counter(np.concatenate([b["example_index"] for b in batches]).tolist())
        if cache_images is None:  # cached: every record it used (with mosaic, its partners too), once
            assert max(own.values()) > 1  # the case the cache changes is met
            assert sorted(src.decoded) == sorted(set(src.decoded))
        if not augment.enabled:  # its own rows, nothing else; without the cache once a use
            assert Counter(src.decoded) == (own if cache_images is False else Counter(set(own)))
        else:  # mosaic tiles come from the process's own rows of the batch: nothing else is decoded
            assert set(src.decoded) == set(own)


# ----------------------------------------------------------------------------- augmentation

COLOURS = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20)]


def _tile(colour, w=60, h=40):
    """A grey image with one rectangle of ``colour``: its box in pixels and normalised."""
    img = np.full((h, w, 3), 114, np.uint8)
    x1, y1, x2, y2 = 10, 8, w - 12, h - 6
    img[y1:y2, x1:x2] = colour
    return img, np.array([[x1, y1, x2, y2]], np.float64)


def test_mosaic_puts_each_box_where_its_pixels_are():
    """Four known images: after the mosaic and a random affine (scale, translation), the pixels
    inside every box are its image's colour, for many draws."""
    tiles = [(*_tile(c), np.array([k])) for k, c in enumerate(COLOURS)]
    aug = Augment(mosaic=1.0, translate=0.1, scale=0.5)
    checked = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        canvas, boxes, labels = mosaic4(tiles, 128, rng)
        img, boxes, labels, _ = random_affine(canvas, boxes, labels, 128, aug, rng)
        assert img.shape == (128, 128, 3)
        for box, label in zip(boxes, labels):
            x1, y1, x2, y2 = box
            inner = img[int(np.ceil(y1)) + 2:int(y2) - 2, int(np.ceil(x1)) + 2:int(x2) - 2].reshape(-1, 3)
            if len(inner) == 0:
                continue
            np.testing.assert_allclose(inner.mean(0), COLOURS[label], atol=12, err_msg=f"seed {seed}")
            checked += 1
    assert checked > 40


def test_mosaic_through_the_pipeline_keeps_boxes_on_their_pixels():
    """The same through MakeSample (records of PIL images, the full Ultralytics recipe except HSV,
    which changes the colours): every box still covers its colour."""
    records = []
    for k, c in enumerate(COLOURS):
        img, box = _tile(c)
        w, h = img.shape[1], img.shape[0]
        cxcywh = np.array([[(box[0, 0] + box[0, 2]) / 2 / w, (box[0, 1] + box[0, 3]) / 2 / h,
                            (box[0, 2] - box[0, 0]) / w, (box[0, 3] - box[0, 1]) / h]], np.float32)
        records.append(Record(Image.fromarray(img), cxcywh, np.array([k], np.int32), f"tile{k}", (w, h)))
    aug = Augment(mosaic=1.0, translate=0.1, scale=0.5, fliplr=0.5)
    make = MakeSample(RecordSource(records), img_size=96, max_boxes=8, augment=aug, seed=0, epochs=10)
    for epoch in range(5):
        for index in range(4):
            out = make((epoch, index))
            for b, label in zip(out["boxes_cxcywh"][out["mask"]], out["labels"][out["mask"]]):
                x1, y1 = (b[0] - b[2] / 2) * 96, (b[1] - b[3] / 2) * 96
                x2, y2 = (b[0] + b[2] / 2) * 96, (b[1] + b[3] / 2) * 96
                inner = out["images"][int(np.ceil(y1)) + 2:int(y2) - 2, int(np.ceil(x1)) + 2:int(x2) - 2]
                if inner.size:
                    np.testing.assert_allclose(inner.reshape(-1, 3).mean(0), COLOURS[label], atol=12)


def test_flip_moves_boxes_exactly():
    img = np.zeros((10, 20, 3), np.uint8)
    img[2:5, 3:7] = 255
    boxes = np.array([[3.0, 2.0, 7.0, 5.0]])
    flipped, fboxes = flip_lr(img, boxes)
    np.testing.assert_array_equal(fboxes, [[13.0, 2.0, 17.0, 5.0]])
    ys, xs = np.nonzero(flipped[..., 0])
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (13, 17, 2, 5)


def test_no_box_leaves_the_image_and_small_boxes_are_removed(shapes64):
    """Many augmented samples: every box lies inside the image, is wider and taller than 2 px and
    has an aspect ratio below 100; the counts of removed boxes are carried in the batches."""
    pipe = TrainPipeline(shapes64, batch_size=8, img_size=S, max_boxes=16, seed=0, augment=ULTRALYTICS, epochs=20)
    stats = DataStats()
    for batch in pipe.dataset(30):
        add_counts(stats, batch)
        b = batch["boxes_cxcywh"][batch["mask"]]
        x1, y1, x2, y2 = b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2
        assert (x1 >= -1e-6).all() and (y1 >= -1e-6).all() and (x2 <= 1 + 1e-6).all() and (y2 <= 1 + 1e-6).all()
        w, h = b[:, 2] * S, b[:, 3] * S
        assert (w > 2 - 1e-4).all() and (h > 2 - 1e-4).all()
        assert (np.maximum(w / h, h / w) < 100).all()
    assert stats.boxes_dropped_augmentation > 0  # translations and mosaics cut some boxes away


def test_box_candidates_rule():
    before = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 300, 3]], float)
    after = np.array([[0, 0, 10, 10],      # kept
                      [0, 0, 2, 10],       # width not above 2 px
                      [0, 0, 3, 3],        # 9% of the area
                      [0, 0, 4, 3],        # 12% of the area: kept
                      [0, 0, 299, 2.9]])   # height not above 2 px
    assert box_candidates(before, after).tolist() == [True, False, False, True, False]
    assert not box_candidates(np.array([[0, 0, 500, 4]], float), np.array([[0, 0, 500, 4.5]], float))[0]  # ratio 111


# ----------------------------------------------------------------------------- resume after kill -9

def _train_cmd(run_dir, *extra):
    return [sys.executable, "-m", "yolo11_jax.train", "--config", "smoke", "--run-dir", str(run_dir),
            "--val-split", "none", "--epochs", "2", "--log-every", "1", "--augment", "ultralytics",
            "--checkpoint-every", "3", "--keep-checkpoints", "10", *extra]


def _losses(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["total_loss"] for r in rows if r["kind"] == "interval"}


@pytest.mark.multiprocess
def test_kill_9_inside_an_epoch_then_resume_continues_with_the_next_batch(tmp_path):
    """A run killed with SIGKILL after a checkpoint inside epoch 2, then --resume: every step's loss
    equals an uninterrupted run's, bit for bit on the CPU (augmentation on, so the data pipeline's
    position, restored from the checkpoint, decides every batch)."""
    env = subprocess_env()
    full, part = tmp_path / "full", tmp_path / "part"
    proc = subprocess.run(_train_cmd(full), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    killed = subprocess.Popen(_train_cmd(part), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.time() + 600
    target = part / "checkpoints" / "12"        # step 12 = inside epoch 2 (8 steps per epoch, 16 in all)
    while not (target / "meta").exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert (target / "data").is_dir()  # the pipeline's state is in the checkpoint
    from yolo11_jax.train import main
    assert main(["--resume", str(part)]) == 0
    want, got = _losses(full), _losses(part)
    assert sorted(got) == sorted(want) == list(range(1, 17))
    assert got == want


# ----------------------------------------------------------------------------- memory

_RSS_SCRIPT = """
import os, sys
from yolo11_jax.train import train
from yolo11_jax.configs import named_config
n = int(sys.argv[1])
cfg = named_config("smoke", run_dir=sys.argv[2], shapes_train_images=n, shapes_img_size=64, val_split=None,
                   eval_every_epochs=0, steps=40, log_every=10, checkpoint_every_epochs=0, augment="ultralytics")
train(cfg, progress=False)
resident_pages = int(open("/proc/self/statm").read().split()[1])  # the RSS now, after 40 steps
print("RSS", resident_pages * os.sysconf("SC_PAGE_SIZE"))
"""


def _rss(n, run_dir):
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(n), str(run_dir)], env=subprocess_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout.split("RSS")[-1])


@pytest.mark.multiprocess
def test_training_memory_does_not_grow_with_the_dataset(tmp_path):
    """Same settings, 20,000 vs 2,000 synthetic images: the RSS after 40 steps differs by less than
    10% (images are decoded when first used; the decoded-image cache, on when the whole index fits
    its budget, holds only those used so far; only the index grows)."""
    small, large = _rss(2000, tmp_path / "s"), _rss(20000, tmp_path / "l")
    assert abs(large - small) / small < 0.10, (small, large)


@pytest.mark.parametrize("augment", [Augment(), ULTRALYTICS])
def test_decoded_image_cache_gives_the_same_batches(shapes64, augment):
    from yolo11_jax.data.pipeline import decoded_bytes

    assert decoded_bytes(shapes64) == 48 * S * S * 3
    plain = TrainPipeline(shapes64, batch_size=8, img_size=S, max_boxes=8, seed=3, augment=augment,
                          cache_images=False)
    cached = TrainPipeline(shapes64, batch_size=8, img_size=S, max_boxes=8, seed=3, augment=augment)
    assert cached.cache_images and not plain.cache_images  # 48 small images fit the budget
    _same_batches([plain.batch(s) for s in range(7)], [cached.batch(s) for s in range(7)])
    assert len(cached.make_sample._decoded) == 48  # one epoch and a bit: every image decoded once
    _same_batches(list(plain.dataset(3)), list(cached.dataset(3)))


def test_threads_by_core_count():
    from yolo11_jax.data.pipeline import _read_options, default_threads

    assert [default_threads(c) for c in (1, 2, 4, 8, 64)] == [2, 2, 2, 4, 8]
    assert _read_options(0, 3).num_threads == 3 and _read_options(2).num_threads == 1


def test_positions_read_the_permutation_once_per_step_and_equal_reading_it_per_sample():
    """``_Position`` keeps each step's rows (one Grain ``index_shuffle`` per row, not per sample
    and row); what it returns equals reading the permutation for every sample, across epochs and
    for each process of a global batch, also after pickling (a worker process)."""
    import pickle

    import grain
    from yolo11_jax.data.pipeline import _Position

    n, batch = 37, 8
    order = grain.MapDataset.range(n).shuffle(seed=5).repeat()
    steps_per_epoch = n // batch

    def expected(u, process_index, process_count):
        local = batch // process_count
        step, row = divmod(u, local)
        epoch, k = divmod(step, steps_per_epoch)
        first = epoch * n + k * batch + process_index * local
        rows = tuple(int(order[first + r]) for r in range(local))
        return epoch, rows[row], rows

    for p, count in [(0, 1), (0, 2), (1, 2)]:
        position = _Position(order, n, batch, p, count)
        local = batch // count
        us = range(3 * steps_per_epoch * local + 5)   # three epochs and a bit, more steps than kept
        position.CACHED_STEPS = 3
        assert [position(u) for u in us] == [expected(u, p, count) for u in us]
        again = pickle.loads(pickle.dumps(position))
        assert again._rows == {} and [again(u) for u in reversed(us)] == [expected(u, p, count) for u in reversed(us)]

    calls = []
    counting = _Position(order, n, batch, 0, 1)
    counting.order = type("Order", (), {"__getitem__": lambda self, i: calls.append(i) or order[i]})()
    for u in range(2 * batch):
        counting(u)
    assert len(calls) == 2 * batch  # one read per row of each step, not batch x batch
