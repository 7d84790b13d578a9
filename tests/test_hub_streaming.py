"""The real ``datasets.load_dataset("detection-datasets/coco", streaming=True)`` against a local fake Hub.

No stand-in for ``load_dataset``: ``tests/hub_server.py`` serves parquet files in the
``detection-datasets/coco`` layout and schema over HTTP on 127.0.0.1, ``HF_ENDPOINT`` (and the module
constants copied from it) point there, and every cache is in ``tmp_path``. Each test checks the fake
hub's request log, so a silent fallback to anything else (the real Hub, a cache) fails the test.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import datasets
import huggingface_hub
import httpx2

from tests.hub_server import (  # noqa: F401  (fake_hub is a fixture)
    FakeHub,
    closed_port_endpoint,
    fake_hub,
    make_coco_rows,
    skip_retry_sleeps,
    use_fake_hub,
)

pytestmark = pytest.mark.network  # a local fake Hub server (sockets)

REPO = "detection-datasets/coco"


def _pixels(image) -> np.ndarray:
    if isinstance(image, dict):
        image = Image.open(io.BytesIO(image["bytes"]))
    return np.asarray(image.convert("RGB"))


def _assert_same_rows(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g["image_id"] == e["image_id"], i  # also checks the order
        assert (g["width"], g["height"]) == (e["width"], e["height"]), i
        assert g["objects"] == e["objects"], i  # bbox_id, category, bbox [x, y, w, h], area
        np.testing.assert_array_equal(_pixels(g["image"]), _pixels(e["image"]), err_msg=f"row {i}")


def _assert_streamed_from(hub: FakeHub, split: str, n_shards: int) -> None:
    """The metadata and every shard of ``split`` were read from ``hub``, nothing was asked that it lacks."""
    log = "\n".join(hub.log())
    assert not hub.unhandled(), f"requests the fake hub has no route for:\n{log}"
    assert hub.served("HEAD", f"/datasets/{REPO}/resolve/main/README.md"), log  # the commit is pinned here
    assert hub.served("GET", f"/api/datasets/{REPO}/tree/"), log  # data files listed here
    commit = hub.commit(REPO)
    for i in range(n_shards):
        shard = f"/datasets/{REPO}/resolve/{commit}/data/{split}-{i:05d}-of-{n_shards:05d}.parquet"
        reads = hub.served("GET", shard)
        assert reads and all(r.status in (200, 206) for r in reads), f"{shard} not read:\n{log}"
        assert all(r.range for r in reads), f"parquet read without a Range header:\n{log}"
        assert sum(r.body_bytes for r in reads) > 0


@pytest.mark.parametrize("with_card", [True, False], ids=["readme", "no-readme"])
def test_load_dataset_streams_from_the_local_hub(fake_hub, with_card):
    train = make_coco_rows(7, seed=11)
    val = make_coco_rows(3, seed=12, first_image_id=1000)
    fake_hub.add_coco_dataset({"train": train, "val": val}, readme=with_card, shards={"train": 2})

    ds = datasets.load_dataset(REPO, split="train", streaming=True)
    assert isinstance(ds, datasets.IterableDataset)
    assert ds.features["objects"]["category"].feature.names[:3] == ["person", "bicycle", "car"]
    # Without a README the features come from the parquet schema, which load_dataset reads already.
    n_before_iterating = len(fake_hub.requests)
    got = list(ds)

    _assert_same_rows(got, train)
    _assert_streamed_from(fake_hub, "train", n_shards=2)
    assert not fake_hub.served("GET", f"/datasets/{REPO}/resolve/{fake_hub.commit(REPO)}/data/val-")
    if with_card:  # all parquet bytes were fetched while iterating
        assert all("/data/" not in r.path for r in fake_hub.requests[:n_before_iterating])
    else:  # no README: 404 EntryNotFound, then the commit sha from the repo-info API
        assert fake_hub.served("HEAD", f"/datasets/{REPO}/resolve/main/README.md", status=404)
        assert fake_hub.served("GET", f"/api/datasets/{REPO}", status=200)


def test_load_dataset_streams_the_val_split(fake_hub):
    """The real repo's files are ``data/val-NNNNN-of-NNNNN-*.parquet``: the split is called ``val``."""
    train = make_coco_rows(2, seed=21)
    val = make_coco_rows(4, seed=22, first_image_id=500)
    fake_hub.add_coco_dataset({"train": train, "val": val})

    got = list(datasets.load_dataset(REPO, split="val", streaming=True))

    _assert_same_rows(got, val)
    _assert_streamed_from(fake_hub, "val", n_shards=1)


def test_validation_is_not_a_split_of_the_coco_repo(fake_hub):
    """``split="validation"`` fails at load_dataset time (datasets does not map val <-> validation)."""
    fake_hub.add_coco_dataset({"train": make_coco_rows(1, seed=31), "val": make_coco_rows(1, seed=32)})
    with pytest.raises(ValueError, match=r"Bad split: validation\. Available splits: \['train', 'val'\]"):
        datasets.load_dataset(REPO, split="validation", streaming=True)


def test_hf_examples_stream_from_the_local_hub(fake_hub):
    """The project's reader on top of the real streaming path: COCO xywh pixels -> normalised cxcywh."""
    from yolo11_jax.data import hf_examples

    rows = make_coco_rows(6, seed=41)
    fake_hub.add_coco_dataset({"train": rows, "val": make_coco_rows(1, seed=42)})

    examples = list(hf_examples(REPO, split="train", num_classes=80))

    kept = [(i, r) for i, r in enumerate(rows) if r["objects"]["bbox"]]  # images without boxes are skipped
    assert [ex.source_id for ex in examples] == [f"{REPO}/train[{i}]" for i, _ in kept]
    for ex, (_, r) in zip(examples, kept):
        np.testing.assert_array_equal(ex.image, _pixels(r["image"]))
        np.testing.assert_array_equal(ex.labels, r["objects"]["category"])
        w, h = r["width"], r["height"]
        want = [[(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h] for x, y, bw, bh in r["objects"]["bbox"]]
        np.testing.assert_allclose(ex.boxes_cxcywh, want, rtol=1e-6)
    _assert_streamed_from(fake_hub, "train", n_shards=1)


def test_unreachable_hub_error(tmp_path, monkeypatch):
    """What ``load_dataset(..., streaming=True)`` raises when the Hub can't be reached.

    1. Hub unreachable when ``load_dataset`` runs: ``builtins.ConnectionError("Couldn't reach
       'detection-datasets/coco' on the Hub (LocalEntryNotFoundError)")``, raised by ``load_dataset``
       itself, after ``huggingface_hub``'s HEAD back-off (5 retries: 1+2+4+8+8 = 23 s of sleeps, made
       instant here). ``__cause__`` is ``None`` (datasets re-raises it ``from None``).
    2. Hub reachable for ``load_dataset`` but gone when iterating: ``load_dataset`` succeeds, the first
       ``next()`` raises ``builtins.ConnectionError("Server Disconnected")`` whose ``__cause__`` is
       ``httpx2.ConnectError`` (``huggingface_hub.utils.httpx.ConnectError``), after
       ``datasets.config.STREAMING_READ_MAX_RETRIES`` (20) x (23 s back-off + 5 s) ~ 9 min by default.
    3. Same, but with no ``HfFileSystem`` state from ``load_dataset`` (a new process, or the instance cache
       cleared): ``xopen`` retries ``STREAMING_OPEN_MAX_RETRIES`` (20) x 5 s, then the same
       ``ConnectionError("Server Disconnected")`` from ``httpx2.ConnectError``.
    """
    # --- 1: nothing listens on the port when load_dataset runs
    sleeps = skip_retry_sleeps(monkeypatch)
    use_fake_hub(monkeypatch, closed_port_endpoint(), tmp_path / "hf_home")
    with pytest.raises(ConnectionError) as info:
        datasets.load_dataset(REPO, split="train", streaming=True)
    err = info.value
    assert type(err) is ConnectionError  # builtins.ConnectionError, not a subclass
    assert str(err) == f"Couldn't reach '{REPO}' on the Hub (LocalEntryNotFoundError)"
    assert err.__cause__ is None
    # It is not immediate: huggingface_hub retries the HEAD with back-off first (huggingface_hub 2.4.0:
    # sleeps of 1, 2, 4, 8, 8 s, so ~23 s before load_dataset raises).
    assert sleeps.total > 0, "expected back-off sleeps before the error"

    # --- 2 and 3: the hub serves load_dataset, then goes away before the first row is read
    monkeypatch.setattr(datasets.config, "STREAMING_READ_MAX_RETRIES", 2)
    monkeypatch.setattr(datasets.config, "STREAMING_OPEN_MAX_RETRIES", 2)
    for fresh_fs in (False, True):
        hub = FakeHub(tmp_path / "hub").start()
        try:
            use_fake_hub(monkeypatch, hub.endpoint, tmp_path / f"hf_home_{fresh_fs}")
            if not (tmp_path / "hub" / "datasets" / REPO).exists():
                hub.add_coco_dataset({"train": make_coco_rows(2, seed=51), "val": make_coco_rows(1, seed=52)})
            ds = datasets.load_dataset(REPO, split="train", streaming=True)  # no error yet
            assert not any("/data/" in r.path for r in hub.requests)
        finally:
            hub.stop()
        if fresh_fs:
            huggingface_hub.HfFileSystem.clear_instance_cache()
        sleeps.clear()
        with pytest.raises(ConnectionError) as info:
            next(iter(ds))
        err = info.value
        assert type(err) is ConnectionError
        assert str(err) == "Server Disconnected"
        assert isinstance(err.__cause__, httpx2.ConnectError), repr(err.__cause__)
        assert isinstance(err.__cause__, huggingface_hub.utils.httpx.ConnectError)
        cfg = datasets.config
        interval = cfg.STREAMING_OPEN_RETRY_INTERVAL if fresh_fs else cfg.STREAMING_READ_RETRY_INTERVAL
        assert sleeps.count(interval) >= 2, sleeps  # datasets' own retry loop ran (2 retries here, 20 by default)


def test_training_batches_stream_from_the_local_hub(fake_hub):
    """The notebook's path end to end: the real streaming `load_dataset` through the project's
    reader (`build_dataset` on the Hub name) into the Grain pipeline's training batches; the
    validation split answers to the name `validation` although the repo calls it `val`."""
    from yolo11_jax.data import TrainPipeline, build_dataset

    train_rows, val_rows = make_coco_rows(9, seed=61), make_coco_rows(3, seed=62)
    fake_hub.add_coco_dataset({"train": train_rows, "val": val_rows})
    data = build_dataset(REPO, split="train", num_classes=80, img_size=64)
    kept = [r for r in train_rows if r["objects"]["bbox"]]  # images without boxes are skipped (the notebook)
    assert len(data.examples) == len(kept) and data.examples[0].image.shape == (64, 64, 3)
    assert data.examples[0].source_id == f"{REPO}/train[0]"
    pipe = TrainPipeline(data.examples, batch_size=4, img_size=64, max_boxes=8, seed=0)
    batches = list(pipe.dataset(2 * pipe.steps_per_epoch))
    assert len(batches) == 2 * pipe.steps_per_epoch and batches[0]["images"].shape == (4, 64, 64, 3)
    for b in batches:
        for row, i in enumerate(b["example_index"]):
            k = data.examples[i].num_boxes
            np.testing.assert_array_equal(b["labels"][row, :min(k, 8)], data.examples[i].labels[:8])
    val = build_dataset(REPO, split="validation", num_classes=80, img_size=64, skip_empty=False)
    assert len(val.examples) == 3 and val.examples[0].source_id == f"{REPO}/val[0]"
    _assert_streamed_from(fake_hub, "train", n_shards=1)


def test_training_cli_reports_an_unreachable_hub_in_one_line(tmp_path, monkeypatch, capsys):
    """`python -m yolo11_jax.train --config notebook-coco` with no Hub: exit status 2 and one
    error line saying what to do, no traceback from inside `datasets`."""
    from yolo11_jax import train

    skip_retry_sleeps(monkeypatch)
    use_fake_hub(monkeypatch, closed_port_endpoint(), tmp_path / "hf_home")
    rc = train.main(["--config", "notebook-coco", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "cannot reach the Hugging Face Hub" in err and REPO in err and "local copy" in err
    assert "Traceback" not in err and err.count("\n") <= 3


def test_a_stream_without_max_samples_trains_without_being_kept(fake_hub, tmp_path):
    """A Hub name without --max-samples stays a stream: re-read every epoch, per-image
    augmentation only, an iterator state (epoch, rows used) that resumes exactly; and the
    trainer runs on it (its size unknown here: --steps sets the length)."""
    from yolo11_jax.configs import named_config
    from yolo11_jax.data import ULTRALYTICS, build_dataset
    from yolo11_jax.data.pipeline import StreamPipeline, StreamSource
    from yolo11_jax.train import train

    fake_hub.add_coco_dataset({"train": make_coco_rows(10, seed=71), "val": make_coco_rows(2, seed=72)})
    data = build_dataset(REPO, split="train", num_classes=80, img_size=64, stream=True)
    assert isinstance(data.examples, StreamSource)
    pipe = StreamPipeline(data.examples, batch_size=4, img_size=64, max_boxes=8, seed=0, augment=ULTRALYTICS)
    it = iter(pipe.dataset(6))
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    rest = [next(it) for _ in range(3)]
    assert first[0]["images"].shape == (4, 64, 64, 3) and first[0]["images"].dtype == np.uint8
    again = iter(pipe.dataset(6))
    again.set_state(state)
    for a, b in zip(rest, [next(again) for _ in range(3)]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert state["epoch"] >= 1  # 10 rows (fewer with boxes) in batches of 4: the stream was read again
    out = train(named_config("smoke", data=REPO, num_classes=80, img_size=64, steps=3, log_every=1,
                             val_split=None, run_dir=str(tmp_path / "run")), progress=False)
    assert out["steps"] == 3 and np.isfinite(out["history"][-1]["total_loss"])
