"""The cache trusts nothing it stores: alias files are validated before any path is built from them,
removals never leave the cache root, shards are checked against their manifest (identity, not only
checksums), and the repair commands survive whatever is broken and report it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cvgl.cache.store import CacheStore

from tests.helpers import TINY, cli, one_error_line

GALLERY = "demo.gallery_satellite@2"
OTHER_LAYER = "demo.gallery_satellite@1"
QUERY = "demo.query_drone@2"


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory) -> Path:
    """One real extraction (two layers, two views, several shards each), copied by every test."""
    base = tmp_path_factory.mktemp("built")
    cache = base / "c"
    p = cli("extract", "demo", *TINY, cache=cache, cwd=base)
    assert p.returncode == 0, p.stderr
    return cache


@pytest.fixture()
def cache(built_cache, tmp_path) -> Path:
    c = tmp_path / "c"
    shutil.copytree(built_cache, c, symlinks=True)
    return c


def _entry_dirs(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "entries").iterdir())


def _alias(cache: Path, name: str) -> Path:
    return cache / "aliases" / name


@pytest.mark.slow
def test_rm_of_an_alias_holding_an_empty_line_keeps_every_entry_and_exits_2(cache, tmp_path):
    before = _entry_dirs(cache)
    _alias(cache, GALLERY).write_text("\n")
    line = one_error_line(cli("cache", "rm", GALLERY, cache=cache, cwd=tmp_path))
    assert GALLERY in line and "is empty" in line and "cache rm --alias" in line
    assert _entry_dirs(cache) == before
    # The repair it names works, and removes only the alias file.
    p = cli("cache", "rm", "--alias", GALLERY, cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert not _alias(cache, GALLERY).exists() and _entry_dirs(cache) == before


@pytest.mark.slow
@pytest.mark.parametrize("content", ["../../outside\n", "ABSOLUTE"])
def test_alias_pointing_outside_the_cache_never_removes_that_folder(cache, tmp_path, content):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    text = f"{outside}\n" if content == "ABSOLUTE" else content
    _alias(cache, GALLERY).write_text(text)
    before = _entry_dirs(cache)
    line = one_error_line(cli("cache", "rm", GALLERY, cache=cache, cwd=tmp_path))
    assert "not one cache key" in line and GALLERY in line
    assert (outside / "precious.txt").read_text() == "keep me"
    assert _entry_dirs(cache) == before
    # Every command resolving the alias refuses it the same way, without reading anything.
    p = cli("retrieve", "demo", f"query={QUERY}", f"gallery={GALLERY}", cache=cache, cwd=tmp_path)
    assert "not one cache key" in one_error_line(p)
    # gc removes the bad alias file (and nothing outside the cache).
    p = cli("cache", "gc", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert not _alias(cache, GALLERY).exists()
    assert (outside / "precious.txt").read_text() == "keep me" and _entry_dirs(cache) == before


def test_entry_folder_symlinked_outside_the_cache_is_not_removed_through(cache, tmp_path):
    store = CacheStore(cache)
    key = store.resolve(GALLERY)
    outside = tmp_path / "outside"
    shutil.move(str(cache / "entries" / key), outside)
    (cache / "entries" / key).symlink_to(outside)
    line = one_error_line(cli("cache", "rm", GALLERY, cache=cache, cwd=tmp_path))
    assert "outside the cache root" in line
    assert (outside / "manifest.json").exists() and len(list(outside.glob("shard-*.h5"))) == 2


@pytest.mark.slow
def test_shard_copied_from_another_layer_is_refused_by_retrieve_and_export(cache, tmp_path):
    store = CacheStore(cache)
    target = store.open(GALLERY).shard_paths()[0]
    source = store.open(OTHER_LAYER).shard_paths()[0]
    assert source.stat().st_size == target.stat().st_size  # same size: only identity tells them apart
    shutil.copyfile(source, target)

    p = cli("retrieve", "demo", f"query={QUERY}", f"gallery={GALLERY}", "out=r", cache=cache, cwd=tmp_path)
    line = one_error_line(p)
    assert "shard-00000.h5" in line and "another entry" in line and f"cache rm {GALLERY}" in line
    assert not (tmp_path / "r" / "metrics.json").exists()

    p = cli("cache", "export", GALLERY, "--format", "npy", "--out", "exp", cache=cache, cwd=tmp_path)
    assert "another entry" in one_error_line(p)

    p = cli("cache", "verify", cache=cache, cwd=tmp_path)
    assert p.returncode == 2
    assert "shard-00000.h5: not part of this entry" in p.stderr and "another entry" in p.stderr


def test_manifest_count_that_disagrees_with_its_shards_is_refused(cache, tmp_path):
    import json

    store = CacheStore(cache)
    path = store.open(GALLERY).dir / "manifest.json"
    m = json.loads(path.read_text())
    m["count"] += 1
    path.write_text(json.dumps(m))
    p = cli("cache", "export", GALLERY, "--format", "npy", "--out", "exp", cache=cache, cwd=tmp_path)
    line = one_error_line(p)
    assert "manifest" in line and f"says {m['count']} rows" in line


def test_shard_removed_while_reading_says_the_entry_was_removed(cache, tmp_path):
    # Opening the entry succeeds, then the shards vanish before they are read, as when another
    # process runs `pipeline cache rm` during a retrieval.
    from cvgl.core.errors import UserError

    store = CacheStore(cache)
    entry = store.open(GALLERY)
    shutil.rmtree(entry.dir)
    with pytest.raises(UserError, match="removed while reading") as info:
        entry.read()
    assert "corrupt" not in str(info.value) and "Errno" not in str(info.value)


@pytest.mark.slow
def test_non_utf8_alias_repair_commands_report_it_and_do_not_crash(cache, tmp_path):
    _alias(cache, GALLERY).write_bytes(b"\xff\xfe\x00garbage")
    before = _entry_dirs(cache)

    p = cli("cache", "ls", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "not UTF-8" in p.stdout
    assert p.stdout.count("complete") == 4  # every entry is still listed

    p = cli("cache", "verify", cache=cache, cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "not UTF-8" in p.stderr and p.stderr.strip().splitlines()[-1].startswith("error: ")

    line = one_error_line(cli("cache", "rm", GALLERY, cache=cache, cwd=tmp_path))
    assert "not UTF-8" in line and _entry_dirs(cache) == before

    p = cli("retrieve", "demo", f"query={QUERY}", f"gallery={GALLERY}", cache=cache, cwd=tmp_path)
    assert "not UTF-8" in one_error_line(p)

    p = cli("cache", "gc", cache=cache, cwd=tmp_path)
    assert p.returncode == 0 and "Traceback" not in p.stderr
    assert not _alias(cache, GALLERY).exists() and _entry_dirs(cache) == before
    assert cli("cache", "verify", cache=cache, cwd=tmp_path).returncode == 0


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"0123abcd\n", b"not-a-key", ("a" * 64 + "\n" + "b" * 64 + "\n").encode()],
    ids=["empty", "newline", "short", "text", "two-lines"],
)
def test_verify_exits_nonzero_on_an_invalid_alias_file(cache, tmp_path, content):
    _alias(cache, "broken").write_bytes(content)
    p = cli("cache", "verify", cache=cache, cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "broken" in p.stderr and "cache rm --alias broken" in p.stderr
    # Every entry is still fine, and says so.
    assert "entries failed" not in p.stderr


@pytest.mark.slow
def test_dangling_alias_has_its_own_message_and_verify_fails_on_it(cache, tmp_path):
    _alias(cache, "gone").write_text("f" * 64 + "\n")
    p = cli("cache", "show", "gone", cache=cache, cwd=tmp_path)
    line = one_error_line(p)
    assert "dangling" in line and "incomplete" not in line and "cache rm --alias gone" in line
    p = cli("cache", "verify", cache=cache, cwd=tmp_path)
    assert p.returncode == 2 and "dangling" in p.stderr
    p = cli("cache", "gc", cache=cache, cwd=tmp_path)
    assert p.returncode == 0 and not _alias(cache, "gone").exists()


@pytest.mark.slow
def test_unreadable_manifest_is_listed_and_verified_not_a_crash(cache, tmp_path):
    store = CacheStore(cache)
    key = store.resolve(GALLERY)
    (cache / "entries" / key / "manifest.json").write_bytes(b"\xff{not json")
    p = cli("cache", "ls", cache=cache, cwd=tmp_path)
    assert p.returncode == 0 and "unreadable" in p.stdout
    p = cli("cache", "verify", cache=cache, cwd=tmp_path)
    assert p.returncode == 2 and "unreadable manifest" in p.stderr and "Traceback" not in p.stderr
    # rm still removes the broken entry (and only it).
    p = cli("cache", "rm", GALLERY, cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert key not in _entry_dirs(cache) and len(_entry_dirs(cache)) == 3


@pytest.mark.slow
def test_rm_alias_keeps_the_entry_reachable_by_key(cache, tmp_path):
    key = CacheStore(cache).resolve(GALLERY)
    assert cli("cache", "rm", "--alias", GALLERY, cache=cache, cwd=tmp_path).returncode == 0
    p = cli("cache", "show", key[:12], cache=cache, cwd=tmp_path)
    assert p.returncode == 0 and key in p.stdout
    assert "no alias file" in one_error_line(cli("cache", "rm", "--alias", GALLERY, cache=cache, cwd=tmp_path))
