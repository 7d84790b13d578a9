"""A local stand-in for the Hugging Face Hub, for tests of ``datasets.load_dataset(name, streaming=True)``.

``FakeHub`` is a small HTTP server (standard library ``ThreadingHTTPServer`` on ``127.0.0.1``, port 0,
in a background thread) that speaks the part of the Hub's HTTP API that ``datasets`` and
``huggingface_hub`` (written against datasets 5.2.0 / huggingface_hub 2.4.0) use to stream a
data-files-only dataset repo. Repositories are plain folders::

    <root>/datasets/<namespace>/<name>/README.md                           (optional dataset card)
    <root>/datasets/<namespace>/<name>/data/train-00000-of-00002.parquet
    <root>/datasets/<namespace>/<name>/data/train-00001-of-00002.parquet
    <root>/datasets/<namespace>/<name>/data/val-00000-of-00001.parquet

which is the layout of the real ``detection-datasets/coco`` repo (``data/<split>-NNNNN-of-NNNNN-*.parquet``):
``datasets`` takes the split names from the ``data/{split}-NNNNN-of-NNNNN*`` pattern
(``datasets.data_files.SPLIT_PATTERN_SHARDED``), so the splits are ``train`` and ``val`` (not ``validation``).

What ``load_dataset("detection-datasets/coco", split="train", streaming=True)`` asks (logged run)::

    HEAD /datasets/R/resolve/main/README.md              -> 200, X-Repo-Commit: C   (404 if no card, then
    GET  /datasets/R/resolve/main/README.md              -> 200                      GET /api/datasets/R -> sha C)
    HEAD /datasets/R/resolve/C/coco.py                   -> 404 EntryNotFound (no loading scripts)
    GET  /api/datasets/R/revision/C                      -> 200 (HfFileSystem: repo+revision exist)
    HEAD /datasets/R/resolve/C/.huggingface.yaml         -> 404 EntryNotFound
    GET  /api/datasets/R/tree/C/data?recursive=false&expand=false  -> 200 (split patterns)
    GET  /api/datasets/R/tree/C?recursive=false&expand=false       -> 200
    HEAD /datasets/R/resolve/C/dataset_infos.json        -> 404 EntryNotFound
    (no card: GET .../resolve/C/data/train-00000-of-....parquet with Range, to read the parquet schema)
    -- first next(iter(ds)) --
    GET  /datasets/R/resolve/C/data/train-00000-of-00002.parquet  Range: bytes=0-N   -> 206

Endpoints implemented:

* ``HEAD``/``GET /{datasets|models|spaces}/{repo}/resolve/{revision}/{path}``: ``hf_hub_download`` (README,
  script/yaml/infos probes; ``X-Repo-Commit`` pins the commit, ``ETag`` = git blob sha1, ``Content-Length``;
  missing files are ``404`` + ``X-Error-Code: EntryNotFound`` as on the Hub, else ``datasets`` does not
  treat them as absent) and the ``HfFileSystem`` parquet reads: ``GET`` with ``Range: bytes=a-b`` /
  ``bytes=-n`` answered ``206`` + ``Content-Range`` (``416`` past the end). No ``X-Xet-*`` headers, so the
  clients use plain HTTP, never the Xet CAS.
* ``GET /api/{type}s/{repo}`` and ``/api/{type}s/{repo}/revision/{revision}``: repo info (``id``, ``sha``,
  ``siblings``, ...): ``HfFileSystem.resolve_path`` checks the repo and revision with it; ``datasets``
  reads ``sha`` from it when the repo has no README. Unknown repo: ``404 RepoNotFound``; revision other
  than ``main`` or the commit: ``404 RevisionNotFound``.
* ``GET /api/{type}s/{repo}/tree/{revision}[/{path}]?recursive=&expand=``: the listing behind
  ``HfFileSystem.ls``/``glob``/``find`` (data-file pattern resolution). One page (no ``Link`` header).
* ``POST /api/{type}s/{repo}/paths-info/{revision}`` (form or JSON ``paths``): ``HfFileSystem.info`` for
  paths not in its directory cache. Not hit by the flow above, but by other ``hf://`` uses.

The commit sha is a hash of the repo's files, read from disk at each request.

Any other request is answered ``404`` and recorded with ``handled=False`` in :attr:`FakeHub.requests`,
so a test can assert that nothing unexpected was asked for.

The ``fake_hub`` pytest fixture (import it into a test module, or a ``conftest.py``) starts the server,
points ``HF_ENDPOINT`` at it and isolates every cache in ``tmp_path``; see :func:`use_fake_hub` for the
module constants it has to patch besides the environment variables.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import socket
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

# COCO 2017 class names in the order of the real detection-datasets/coco ``category`` ClassLabel.
COCO_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
]  # fmt: skip

REPO_TYPE_PREFIXES = {"datasets": "dataset", "models": "model", "spaces": "space"}
_FIXED_DATE = "2024-01-01T00:00:00.000Z"


def coco_features():
    """The ``datasets.Features`` of ``detection-datasets/coco`` (bbox: COCO ``[x, y, w, h]`` pixels)."""
    import datasets

    return datasets.Features(
        {
            "image_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "width": datasets.Value("int64"),
            "height": datasets.Value("int64"),
            "objects": datasets.Sequence(
                {
                    "bbox_id": datasets.Value("int64"),
                    "category": datasets.ClassLabel(names=COCO_NAMES),
                    "bbox": datasets.Sequence(datasets.Value("float64"), length=4),
                    "area": datasets.Value("int64"),
                }
            ),
        }
    )


def png_bytes(array) -> bytes:
    """PNG-encode an ``(H, W, 3)`` uint8 array."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def make_coco_rows(n: int, *, seed: int = 0, first_image_id: int = 1, first_bbox_id: int = 1) -> list[dict]:
    """``n`` rows in the ``detection-datasets/coco`` schema with small random PNG images (deterministic)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows, bbox_id = [], first_bbox_id
    for i in range(n):
        h, w = int(rng.integers(12, 40)), int(rng.integers(12, 40))
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        k = int(rng.integers(0, 4))  # 0..3 objects (images without objects exist in COCO too)
        bboxes, cats, areas, ids = [], [], [], []
        for _ in range(k):
            x, y = float(rng.integers(0, w - 4)), float(rng.integers(0, h - 4))
            bw, bh = float(rng.integers(1, w - x)), float(rng.integers(1, h - y))
            bboxes.append([x, y, bw, bh])
            cats.append(int(rng.integers(0, len(COCO_NAMES))))
            areas.append(int(bw * bh))
            ids.append(bbox_id)
            bbox_id += 1
        rows.append(
            {
                "image_id": first_image_id + i,
                "image": {"bytes": png_bytes(pixels), "path": None},
                "width": w,
                "height": h,
                "objects": {"bbox_id": ids, "category": cats, "bbox": bboxes, "area": areas},
            }
        )
    return rows


def write_coco_parquet(path: os.PathLike, rows: Sequence[dict]) -> Path:
    """Write ``rows`` (see :func:`make_coco_rows`) as one parquet file with the coco Features."""
    import datasets

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {k: [r[k] for r in rows] for k in coco_features()}
    datasets.Dataset.from_dict(columns, features=coco_features()).to_parquet(str(path))
    return path


def coco_dataset_card(split_sizes: dict[str, int]) -> str:
    """A ``README.md`` whose YAML header has the ``dataset_info`` (features, splits), as the real repo's has."""
    import datasets
    import huggingface_hub
    from datasets.info import DatasetInfosDict

    splits = datasets.SplitDict()
    for name, n in split_sizes.items():
        splits.add(datasets.SplitInfo(name, num_examples=n))
    info = datasets.DatasetInfo(features=coco_features(), splits=splits)
    card_data = huggingface_hub.DatasetCardData()
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    return f"---\n{card_data.to_yaml()}\n---\n# COCO (local test copy)\n"


# ----------------------------------------------------------------------------- the repos on disk


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    """One repo's files, read from disk at request time (so tests may add files at any point)."""

    commit: str
    files: dict[str, Path]  # path in repo -> file on disk
    oids: dict[str, str]
    sizes: dict[str, int]

    @classmethod
    def read(cls, folder: Path) -> "_Snapshot":
        files = {
            p.relative_to(folder).as_posix(): p
            for p in sorted(folder.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(folder).parts
        }
        oids, sizes = {}, {}
        for rel, p in files.items():
            data = p.read_bytes()
            oids[rel], sizes[rel] = _git_blob_oid(data), len(data)
        commit = hashlib.sha1("\n".join(f"{r} {o}" for r, o in oids.items()).encode()).hexdigest()
        return cls(commit, files, oids, sizes)

    def dirs(self) -> set[str]:
        out = set()
        for rel in self.files:
            parts = rel.split("/")[:-1]
            out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return out

    def tree_oid(self, directory: str) -> str:
        prefix = directory + "/"
        items = sorted(f"{r} {o}" for r, o in self.oids.items() if r.startswith(prefix))
        return hashlib.sha1("\n".join(items).encode()).hexdigest()

    def entry(self, path: str) -> Optional[dict]:
        """The JSON of one tree / paths-info entry (``None`` if ``path`` doesn't exist)."""
        if path in self.files:
            return {"type": "file", "oid": self.oids[path], "size": self.sizes[path], "path": path}
        if path in self.dirs():
            return {"type": "directory", "oid": self.tree_oid(path), "size": 0, "path": path}
        return None

    def children(self, directory: str, recursive: bool) -> list[dict]:
        prefix = directory + "/" if directory else ""
        names = sorted(set(self.files) | self.dirs())
        out = []
        for p in names:
            if not p.startswith(prefix) or p == directory:
                continue
            if not recursive and "/" in p[len(prefix) :]:
                continue
            out.append(self.entry(p))
        # The Hub lists folders before files.
        return sorted(out, key=lambda e: (e["type"] != "directory", e["path"]))


@dataclasses.dataclass
class HubRequest:
    """One request the fake hub answered."""

    method: str
    path: str  # URL path, percent-decoded
    query: dict[str, list[str]]
    range: Optional[str]
    status: int
    handled: bool  # False: no route matched (answered 404)
    body_bytes: int  # bytes of content sent
    t: float = 0.0  # seconds since the hub started, when the answer was sent

    def __str__(self) -> str:
        rng = f" [{self.range}]" if self.range else ""
        return f"{self.method} {self.path} -> {self.status}{rng}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects from the Hub
    server: "_Server"

    # ------------------------------------------------------------------ plumbing
    def setup(self):
        super().setup()
        hub = self.server.hub
        with hub._lock:
            hub._connections.add(self.connection)
            hub._handler_threads.add(threading.current_thread())

    def finish(self):
        try:
            super().finish()
        finally:
            hub = self.server.hub
            with hub._lock:
                hub._connections.discard(self.connection)
                hub._handler_threads.discard(threading.current_thread())

    def log_message(self, format, *args):  # quiet: the hub keeps its own log
        pass

    def do_HEAD(self):
        self._dispatch(head=True)

    def do_GET(self):
        self._dispatch(head=False)

    def do_POST(self):
        self._dispatch(head=False)

    def _dispatch(self, head: bool):
        hub = self.server.hub
        url = urlsplit(self.path)
        self._path = unquote(url.path)
        self._query = parse_qs(url.query, keep_blank_values=True)
        self._range = self.headers.get("Range")
        self._handled = True
        n = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(n) if n else b""
        if hub.delay_s:
            time.sleep(hub.delay_s)
        try:
            status, headers, body = hub._route(self.command, url.path, self._query, self._body, self.headers)
        except _NoRoute:
            self._handled = False
            status, headers, body = _error(404, "NotFound", f"no route for {self.command} {url.path}")
        except Exception as e:  # a bug in the fake hub: make it loud, not a silent hang
            status, headers, body = _error(500, "FakeHubError", f"{type(e).__name__}: {e}")
            hub.errors.append(e)
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)
        with hub._lock:
            hub.requests.append(
                HubRequest(self.command, self._path, self._query, self._range, status, self._handled,
                           0 if head else len(body), time.monotonic() - hub._t0)
            )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() closes the connections itself, then joins the threads it knows
    hub: "FakeHub"


class _NoRoute(Exception):
    pass


def _json(obj: Any, status: int = 200, headers: Optional[dict] = None) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, json.dumps(obj).encode()


def _error(status: int, code: Optional[str], message: str, headers: Optional[dict] = None):
    h = {"X-Error-Message": message, **(headers or {})}
    if code:
        h["X-Error-Code"] = code
    return _json({"error": message}, status, h)


_RESOLVE_RE = re.compile(r"^/(datasets|models|spaces)/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_API_RE = re.compile(r"^/api/(datasets|models|spaces)/([^/]+/[^/]+)(?:/(revision|tree|paths-info)/([^/]+)(/.*)?)?$")


class FakeHub:
    """A fake Hugging Face Hub serving the repo folders under ``root`` (see the module docstring).

    Attributes:
      endpoint: ``http://127.0.0.1:<port>``, for ``HF_ENDPOINT``.
      requests: every request answered, in order (:class:`HubRequest`).
      errors: exceptions raised by the fake hub itself while answering (should stay empty).
      delay_s: sleep this long before answering each request (for timeout tests).
    """

    def __init__(self, root: os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[HubRequest] = []
        self.errors: list[BaseException] = []
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self.endpoint = ""
        self._t0 = time.monotonic()

    # ------------------------------------------------------------------ repos
    def repo_dir(self, repo_id: str, repo_type: str = "dataset") -> Path:
        return self.root / f"{repo_type}s" / repo_id

    def add_file(self, repo_id: str, path_in_repo: str, data: bytes, repo_type: str = "dataset") -> Path:
        p = self.repo_dir(repo_id, repo_type) / path_in_repo
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p

    def add_coco_dataset(
        self,
        splits: dict[str, Sequence[dict]],
        repo_id: str = "detection-datasets/coco",
        *,
        readme: bool = True,
        shards: Optional[dict[str, int]] = None,
    ) -> Path:
        """Write a repo in the ``detection-datasets/coco`` layout: ``data/<split>-NNNNN-of-NNNNN.parquet``.

        ``splits`` maps split names (``"train"``, ``"val"``) to rows (:func:`make_coco_rows`); ``shards``
        optionally splits a split's rows over that many consecutive parquet files.
        """
        folder = self.repo_dir(repo_id)
        for split, rows in splits.items():
            n = (shards or {}).get(split, 1)
            per = -(-len(rows) // n) if rows else 0
            for i in range(n):
                shard = folder / "data" / f"{split}-{i:05d}-of-{n:05d}.parquet"
                write_coco_parquet(shard, rows[i * per : (i + 1) * per])
        if readme:
            (folder / "README.md").write_text(coco_dataset_card({s: len(r) for s, r in splits.items()}))
        return folder

    def _snapshot(self, repo_type: str, repo_id: str) -> Optional[_Snapshot]:
        folder = self.root / f"{repo_type}s" / repo_id
        return _Snapshot.read(folder) if folder.is_dir() else None

    def commit(self, repo_id: str, repo_type: str = "dataset") -> str:
        snap = self._snapshot(repo_type, repo_id)
        if snap is None:
            raise KeyError(repo_id)
        return snap.commit

    # ------------------------------------------------------------------ routing
    def _repo_and_revision(self, kind: str, repo_id: str, revision: str):
        """(snapshot, error response): revision must be ``main`` or the current commit sha."""
        snap = self._snapshot(REPO_TYPE_PREFIXES[kind], repo_id)
        if snap is None:
            return None, _error(404, "RepoNotFound", "Repository not found")
        if revision not in ("main", snap.commit):
            return None, _error(404, "RevisionNotFound", "Invalid rev id: " + revision)
        return snap, None

    def _route(self, method: str, raw_path: str, query: dict, body: bytes, req_headers) -> tuple[int, dict, bytes]:
        m = _RESOLVE_RE.match(raw_path)
        if m and method in ("GET", "HEAD"):
            kind, repo_id, revision, path = m.group(1), unquote(m.group(2)), unquote(m.group(3)), unquote(m.group(4))
            return self._resolve(kind, repo_id, revision, path, req_headers)
        m = _API_RE.match(raw_path)
        if m:
            kind, repo_id, action = m.group(1), unquote(m.group(2)), m.group(3)
            revision = unquote(m.group(4)) if m.group(4) else "main"
            sub = unquote(m.group(5) or "").strip("/")
            if action in (None, "revision") and method in ("GET", "HEAD") and not sub:
                return self._repo_info(kind, repo_id, revision)
            if action == "tree" and method == "GET":
                return self._tree(kind, repo_id, revision, sub, query)
            if action == "paths-info" and method == "POST" and not sub:
                return self._paths_info(kind, repo_id, revision, body, req_headers)
        raise _NoRoute

    def _repo_info(self, kind, repo_id, revision):
        snap, err = self._repo_and_revision(kind, repo_id, revision)
        if err:
            return err
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": snap.commit,
            "lastModified": _FIXED_DATE,
            "createdAt": _FIXED_DATE,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [{"rfilename": r} for r in snap.files],
        }
        return _json(info)

    def _tree(self, kind, repo_id, revision, sub, query):
        snap, err = self._repo_and_revision(kind, repo_id, revision)
        if err:
            return err
        if sub and snap.entry(sub) is None:
            return _error(404, "EntryNotFound", f"{sub} does not exist on \"{revision}\"")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        return _json(snap.children(sub, recursive))  # one page: no ``Link: <...>; rel="next"`` header

    def _paths_info(self, kind, repo_id, revision, body, req_headers):
        snap, err = self._repo_and_revision(kind, repo_id, revision)
        if err:
            return err
        ctype = req_headers.get("Content-Type", "")
        if "json" in ctype:
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode(), keep_blank_values=True).get("paths", [])
        out = [e for e in (snap.entry(p.strip("/")) for p in paths) if e is not None]
        return _json(out)

    def _resolve(self, kind, repo_id, revision, path, req_headers):
        snap, err = self._repo_and_revision(kind, repo_id, revision)
        if err:
            return err
        if path not in snap.files:
            return _error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": snap.commit})
        data = snap.files[path].read_bytes()
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{snap.oids[path]}"',
            "X-Repo-Commit": snap.commit,
            "Last-Modified": formatdate(0, usegmt=True),
        }
        rng = req_headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return _error(416, None, "bad range", {"Content-Range": f"bytes */{len(data)}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
            else:  # suffix range: the last N bytes
                start, end = max(0, len(data) - int(m.group(2))), len(data) - 1
            if start >= len(data) or start > end:
                return _error(416, None, "range not satisfiable", {"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, headers, data[start : end + 1]
        return 200, headers, data

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeHub":
        self._t0 = time.monotonic()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                         name="fake-hf-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: close the listening socket and every open (keep-alive) connection."""
        if self._server is None:
            return
        self._server.shutdown()  # serve_forever returns
        self._server.server_close()  # new connections are refused from here on
        with self._lock:
            connections, handlers = list(self._connections), list(self._handler_threads)
        for conn in connections:  # idle keep-alive connections: their handler threads end
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in [self._thread, *handlers]:
            t.join(timeout=5)
        self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ log helpers
    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def log(self) -> list[str]:
        with self._lock:
            return [str(r) for r in self.requests]

    def unhandled(self) -> list[HubRequest]:
        with self._lock:
            return [r for r in self.requests if not r.handled]

    def served(
        self, method: Optional[str] = None, path_prefix: str = "", status: Optional[int] = None
    ) -> list[HubRequest]:
        """The requests with this method, a path starting with ``path_prefix`` and this status."""
        with self._lock:
            return [
                r for r in self.requests
                if (method is None or r.method == method)
                and r.path.startswith(path_prefix)
                and (status is None or r.status == status)
            ]


# ----------------------------------------------------------------------------- pointing the clients at it

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", None, ""}


def use_fake_hub(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, home: os.PathLike, *, block_network: bool = True
) -> None:
    """Point ``datasets``/``huggingface_hub`` at ``endpoint`` and at caches under ``home``.

    Environment variables alone are not enough once the libraries are imported (as they are, by the
    project and by other tests): both copy ``HF_ENDPOINT``, ``HF_HOME`` & co. into module constants at
    import time. So this sets the variables (for anything imported later / subprocesses) *and* patches:

    * ``huggingface_hub.constants.ENDPOINT`` and ``HUGGINGFACE_CO_URL_TEMPLATE``: ``hf_hub_url`` builds
      ``/resolve/`` URLs from the template and only swaps in a custom endpoint if the URL starts with
      ``constants.ENDPOINT``; ``HfApi()``/``HfFileSystem()`` default to ``constants.ENDPOINT``.
    * ``huggingface_hub.constants.HF_URL_HOSTS`` and ``huggingface_hub.utils._http._HUB_ORIGINS``: the
      hosts treated as the Hub (``hf://`` URL parsing; which redirects keep the auth header).
    * ``datasets.config.HF_ENDPOINT`` (passed as ``endpoint=`` to every ``HfApi``/``HfFileSystem`` that
      ``datasets`` makes, and used to turn ``{endpoint}/.../resolve/...`` URLs into ``hf://`` paths) and
      ``datasets.config.HUB_DATASETS_URL``.
    * Caches: ``huggingface_hub.constants.HF_HOME``/``HF_HUB_CACHE``/``HUGGINGFACE_HUB_CACHE``/
      ``HF_ASSETS_CACHE``/``HF_XET_CACHE``/``HF_TOKEN_PATH``/``HF_STORED_TOKENS_PATH`` (read at call time by
      ``hf_hub_download`` and the token lookup: a user's real token must not be sent) and
      ``datasets.config.HF_CACHE_HOME``/``HF_DATASETS_CACHE``/``HF_MODULES_CACHE``/
      ``DOWNLOADED_DATASETS_PATH``/``EXTRACTED_DATASETS_PATH``. ``load_dataset`` falls back to
      ``CachedDatasetModuleFactory`` (the datasets cache) when the Hub fails, so a user's cache could
      otherwise hide a failure.
    * Offline switches off: ``huggingface_hub.constants.HF_HUB_OFFLINE``, ``datasets.config.HF_HUB_OFFLINE``
      and ``HF_DATASETS_OFFLINE``.
    * Requests that would leave localhost turned off: ``datasets.config.USE_PARQUET_EXPORT = False`` (else
      ``datasets`` asks ``http://datasets-server.<endpoint host>/info`` for the parquet export's infos;
      it ignores any failure of that call, so this changes nothing but the DNS lookup) and
      ``datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False`` (a ``HEAD`` to ``s3.amazonaws.com``, errors
      ignored); ``huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY = True``.
    * ``block_network``: ``socket.getaddrinfo`` refuses any host but localhost (raises ``socket.gaierror``),
      so a stray request fails fast and deterministically instead of waiting for a DNS/network timeout.
    """
    import datasets.config as dconfig
    import huggingface_hub.constants as hconst
    from huggingface_hub.utils import _http as hhttp

    home = Path(home)
    hub_cache, ds_cache = home / "hub", home / "datasets"
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
              "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "HF_XET_CACHE", "HUGGINGFACE_CO_STAGING"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(ds_cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_UPDATE_DOWNLOAD_COUNTS", "0")
    no_proxy = ",".join(x for x in (os.environ.get("NO_PROXY"), "127.0.0.1,localhost") if x)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    monkeypatch.setenv("no_proxy", no_proxy)

    # huggingface_hub
    monkeypatch.setattr(hconst, "ENDPOINT", endpoint)
    monkeypatch.setattr(hconst, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    host = urlsplit(endpoint).hostname
    monkeypatch.setattr(hconst, "HF_URL_HOSTS", frozenset(hconst.HF_URL_HOSTS | {host}))
    if hasattr(hhttp, "_HUB_ORIGINS") and hasattr(hhttp, "_url_origin"):
        monkeypatch.setattr(hhttp, "_HUB_ORIGINS", frozenset(hhttp._HUB_ORIGINS | {hhttp._url_origin(endpoint)}))
    for name, value in {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(hub_cache),
        "HUGGINGFACE_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
    }.items():
        if hasattr(hconst, name):
            monkeypatch.setattr(hconst, name, value)

    # datasets
    for name, value in {
        "HF_ENDPOINT": endpoint,
        "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_CACHE_HOME": str(home),
        "HF_DATASETS_CACHE": ds_cache,
        "HF_MODULES_CACHE": home / "modules",
        "DOWNLOADED_DATASETS_PATH": str(ds_cache / "downloads"),
        "EXTRACTED_DATASETS_PATH": str(ds_cache / "downloads" / "extracted"),
        "HF_HUB_OFFLINE": False,
        "HF_DATASETS_OFFLINE": False,
        "USE_PARQUET_EXPORT": False,
        "HF_UPDATE_DOWNLOAD_COUNTS": False,
    }.items():
        if hasattr(dconfig, name):
            monkeypatch.setattr(dconfig, name, value)

    if block_network:
        real_getaddrinfo = socket.getaddrinfo

        def local_only_getaddrinfo(host, *args, **kwargs):
            h = host.decode() if isinstance(host, bytes) else host
            if h not in _LOCAL_HOSTS:
                raise socket.gaierror(socket.EAI_NONAME, f"fake hub test: network access to {h!r} is blocked")
            return real_getaddrinfo(host, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", local_only_getaddrinfo)


def closed_port_endpoint() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens (a port that was just bound and released)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


class RecordedSleeps(list):
    """The ``time.sleep`` durations that the retry loops of ``huggingface_hub``/``datasets`` asked for."""

    @property
    def total(self) -> float:
        return float(sum(self))


def skip_retry_sleeps(monkeypatch: pytest.MonkeyPatch) -> RecordedSleeps:
    """Make the retry back-off sleeps instant, recording what they would have waited.

    ``huggingface_hub.utils._http`` (``http_backoff``: 5 retries, waits 1, 2, 4, 8, 8 s) and
    ``datasets.utils.file_utils`` (``xopen`` / ``read_with_retries``: ``config.STREAMING_*_MAX_RETRIES``
    retries of ``config.STREAMING_*_RETRY_INTERVAL`` s) call ``time.sleep`` through their module's ``time``;
    only those two module attributes are replaced, not the global ``time.sleep``.
    """
    import time as real_time

    import datasets.utils.file_utils as dfu
    from huggingface_hub.utils import _http as hhttp

    sleeps = RecordedSleeps()

    class _Time:
        def __getattr__(self, name):
            return getattr(real_time, name)

        @staticmethod
        def sleep(seconds):
            sleeps.append(seconds)

    for module in (hhttp, dfu):
        if getattr(module, "time", None) is real_time:
            monkeypatch.setattr(module, "time", _Time())
    return sleeps


@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> Iterable[FakeHub]:
    """A running :class:`FakeHub` (repos under ``tmp_path/hub``) with the HF clients pointed at it.

    Caches live in ``tmp_path/hf_home``. Add repos with ``fake_hub.add_coco_dataset(...)`` /
    ``fake_hub.add_file(...)``; they are read from disk at each request.
    """
    hub = FakeHub(tmp_path / "hub").start()
    try:
        use_fake_hub(monkeypatch, hub.endpoint, tmp_path / "hf_home")
        yield hub
    finally:
        hub.stop()
    assert not hub.errors, f"the fake hub failed while answering: {hub.errors!r}"
