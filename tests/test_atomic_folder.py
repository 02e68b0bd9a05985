"""lzn_hf._atomic.atomic_folder, the one folder writer (exports, conversions, saved datasets, the demo's Space): a
folder is the old one or the new one, never a mix, and nothing temporary stays behind."""

import os
import shutil
from pathlib import Path

import pytest

from lzn_hf._atomic import atomic_folder


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder``: relative path -> bytes (None for a folder)."""
    return {path.relative_to(folder).as_posix(): None if path.is_dir() else path.read_bytes() for path in sorted(folder.rglob("*"))}


def make_old(folder: Path) -> dict:
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (folder / "sub" / "config.json").write_text('{"old": true}\n')
    return snapshot(folder)


def test_a_fresh_target_gets_the_new_folder_and_its_missing_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    with atomic_folder(target) as temporary:
        assert temporary.parent == target.parent and temporary.name.startswith(".out.partial-") and temporary.is_dir()
        assert not target.exists()  # nothing is visible under the name until the block ends
        (temporary / "x.txt").write_text("new")
    assert snapshot(target) == {"x.txt": b"new"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["out"]
    # made as os.mkdir makes a folder (the umask decides), not tempfile's owner-only 0o700
    os.mkdir(tmp_path / "reference")
    assert target.stat().st_mode & 0o777 == (tmp_path / "reference").stat().st_mode & 0o777


def test_success_replaces_an_existing_folder_whole(tmp_path):
    target = tmp_path / "out"
    make_old(target)
    with atomic_folder(target, overwrite=True) as temporary:
        (temporary / "new.txt").write_text("new")
        assert (target / "weights.bin").is_file()  # the old folder stays in place while the new one is written
    assert snapshot(target) == {"new.txt": b"new"}  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old folder moved aside was deleted


@pytest.mark.parametrize("error", [RuntimeError("boom"), OSError(28, "No space left on device"), KeyboardInterrupt()])
@pytest.mark.parametrize("overwrite", [True, False])
def test_an_error_in_the_block_keeps_the_old_folder_byte_identical(tmp_path, error, overwrite):
    target = tmp_path / "out"
    before = make_old(target) if overwrite else {}
    if not overwrite:
        target.mkdir()  # an empty folder, which overwrite=False may replace
    with pytest.raises(type(error)) as raised:
        with atomic_folder(target, overwrite=overwrite) as temporary:
            (temporary / "weights.bin").write_bytes(b"half")
            raise error
    assert raised.value is error  # propagated unchanged
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary sibling left behind


def test_a_non_empty_target_without_overwrite_is_refused_before_the_block_runs(tmp_path):
    target = tmp_path / "out"
    before = make_old(target)
    ran = []
    with pytest.raises(FileExistsError, match=r"out exists and is not empty; pass overwrite=True"):
        with atomic_folder(target) as temporary:
            ran.append(temporary)
    assert not ran and snapshot(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_folder(empty) as temporary:  # an empty folder holds nothing to lose: replaced without overwrite
        (temporary / "x").write_text("x")
    assert snapshot(empty) == {"x": b"x"}


def test_a_folder_filled_meanwhile_is_not_replaced_without_overwrite(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        with atomic_folder(target) as temporary:
            (temporary / "new.txt").write_text("new")
            before = make_old(target)  # another writer got there first
    assert snapshot(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("kind", ["file", "link"])
@pytest.mark.parametrize("overwrite", [True, False])
def test_a_target_that_is_not_a_folder_is_an_error_naming_it(tmp_path, kind, overwrite):
    (tmp_path / "elsewhere").mkdir()
    target = tmp_path / "out"
    if kind == "file":
        target.write_text("keep me")
    else:
        target.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(FileExistsError, match=r"out exists and is not a folder"):
        with atomic_folder(target, overwrite=overwrite):
            pytest.fail("the block must not run")
    assert (target.read_text() == "keep me") if kind == "file" else (target.is_symlink() and not any((tmp_path / "elsewhere").iterdir()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out"]


def test_leftovers_of_a_killed_write_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "out"
    make_old(target)
    (tmp_path / ".out.partial-abc").mkdir()
    (tmp_path / ".out.partial-abc" / "half").write_text("x")
    (tmp_path / ".out.old-abc").mkdir()
    kept = [".outer.partial-abc", ".out.partial-x.partial-abc", "out.partial-abc", ".out.partial-abc.txt"]
    for name in kept:  # other targets' siblings and look-alikes
        (tmp_path / name).mkdir()
    with atomic_folder(target, overwrite=True) as temporary:
        (temporary / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", *kept])
    assert snapshot(target) == {"new.txt": b"new"}


def test_a_failed_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "out"
    before = make_old(target)
    replace = os.replace

    def failing_replace(source, destination):
        if Path(source).name.startswith(".out.partial-"):
            raise OSError("rename failed")
        replace(source, destination)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        with atomic_folder(target, overwrite=True) as temporary:
            (temporary / "new.txt").write_text("new")
    monkeypatch.undo()
    assert snapshot(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_create_false_yields_a_fresh_path_for_writers_that_make_their_folder(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.txt").write_text("a")
    target = tmp_path / "out"
    make_old(target)
    with atomic_folder(target, overwrite=True, create=False) as temporary:
        assert not os.path.lexists(temporary) and temporary.parent == tmp_path
        shutil.copytree(source, temporary)
    assert snapshot(target) == {"a.txt": b"a"}

    with pytest.raises(FileNotFoundError, match=r"the block wrote no folder at .*\.out\.partial-"):
        with atomic_folder(target, overwrite=True, create=False):
            pass
    assert snapshot(target) == {"a.txt": b"a"} and sorted(p.name for p in tmp_path.iterdir()) == ["out", "source"]


@pytest.mark.parametrize("path", [".", "..", "/"])
def test_a_path_without_a_folder_name_is_a_value_error(path):
    with pytest.raises(ValueError, match="path must name a folder"):
        with atomic_folder(path):
            pytest.fail("the block must not run")


# ---------------------------------------------------------------------------------------------------------
# permissions: what is written atomically is as readable as what a plain open() / mkdir() would write
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def umask():
    """Set the process umask for one test, and put the old one back."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_a_new_file_gets_the_mode_of_a_plain_open(tmp_path, umask, mask, expected):
    from lzn_hf._atomic import _current_umask, write_json_atomically, write_text_atomically

    umask(mask)
    assert _current_umask() == mask and os.umask(mask) == mask  # read without being changed
    for path in (write_text_atomically(tmp_path / "README.md", "card\n"), write_json_atomically(tmp_path / "metrics.json", {"a": 1})):
        assert os.stat(path).st_mode & 0o7777 == expected, oct(os.stat(path).st_mode)
    with atomic_folder(tmp_path / "model") as temporary:
        (temporary / "config.json").write_text("{}")
    assert os.stat(tmp_path / "model").st_mode & 0o777 == 0o777 & ~mask


def test_a_rewritten_file_keeps_its_mode(tmp_path, umask):
    from lzn_hf._atomic import write_text_atomically

    umask(0o022)
    path = tmp_path / "metrics.json"
    path.write_text("old")
    path.chmod(0o640)
    write_text_atomically(path, "new")
    assert path.read_text() == "new" and os.stat(path).st_mode & 0o7777 == 0o640
