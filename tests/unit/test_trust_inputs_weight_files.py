"""Which files of a weights folder are hashed, and how often the digest memo is written."""

from __future__ import annotations

import json
import time

import pytest
from cvgl.core import keys
from cvgl.core.errors import UserError
from cvgl.core.keys import DigestMemo
from cvgl.extract.weight_files import weight_files, weights_digest


def _sharded(folder, n=3):
    folder.mkdir()
    shards = [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for s in shards:
        (folder / s).write_bytes(s.encode())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {f"w{i}": s for i, s in enumerate(shards)}}))
    (folder / "config.json").write_text("{}")
    (folder / "README.md").write_text("not weights")
    return shards


def test_a_sharded_folder_lists_index_shards_and_config_only(tmp_path):
    shards = _sharded(tmp_path / "m")
    assert weight_files(tmp_path / "m") == sorted(["config.json", "model.safetensors.index.json", *shards])


def test_the_memo_is_written_once_for_all_the_files_of_a_checkpoint(tmp_path, monkeypatch):
    _sharded(tmp_path / "m", n=5)
    writes = []
    real = keys.write_text_atomic
    monkeypatch.setattr(keys, "write_text_atomic", lambda p, t: (writes.append(p), real(p, t)))
    memo = DigestMemo(tmp_path / "digests.json")
    d1 = weights_digest(tmp_path / "m", memo)
    assert len(writes) == 1
    assert len(json.loads((tmp_path / "digests.json").read_text())) == 7  # config, index, 5 shards
    # Everything memoized: nothing to write the second time, same digest.
    assert weights_digest(tmp_path / "m", DigestMemo(tmp_path / "digests.json")) == d1 and len(writes) == 1


def test_a_shard_outside_the_folder_is_refused(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    (tmp_path / "secret").write_bytes(b"x")
    (m / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../secret"}}))
    with pytest.raises(UserError, match="not a file inside its folder"):
        weight_files(m)


def test_a_big_folder_without_weights_is_refused_without_walking_it(tmp_path):
    for i in range(2000):
        (tmp_path / f"f{i}").write_bytes(b"x")
    memo = DigestMemo(tmp_path / "digests.json")
    t0 = time.time()
    with pytest.raises(UserError, match="without weights"):
        weights_digest(tmp_path, memo)
    assert time.time() - t0 < 1.0
    assert not (tmp_path / "digests.json").exists()


def test_a_fifo_is_refused_without_being_opened(tmp_path):
    import os

    os.mkfifo(tmp_path / "w.pth")
    with pytest.raises(UserError, match="FIFO"):
        weights_digest(tmp_path / "w.pth", DigestMemo(None))
    m = tmp_path / "m"
    m.mkdir()
    os.mkfifo(m / "model.safetensors")
    with pytest.raises(UserError, match="FIFO"):
        weight_files(m)


def test_a_device_or_a_socket_is_refused_without_being_read(tmp_path):
    import socket

    with pytest.raises(UserError, match="character device"):
        weights_digest("/dev/zero", DigestMemo(None))
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(tmp_path / "w.sock"))
        with pytest.raises(UserError, match="socket"):
            weights_digest(tmp_path / "w.sock", DigestMemo(None))
    finally:
        s.close()


def test_a_weights_path_too_long_for_the_system_is_one_short_line(tmp_path):
    from cvgl.cache.store import CacheStore
    from cvgl.configs.schema import load_config
    from cvgl.extract.keys import backbone_identity

    cfg = load_config("demo", [f"backbone.weights={tmp_path / ('a' * 120_000)}"])
    with pytest.raises(UserError, match="too long") as e:
        backbone_identity(cfg, CacheStore(tmp_path / "cache"))
    assert len(str(e.value)) < 400
