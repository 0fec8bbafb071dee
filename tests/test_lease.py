"""One writer per store: a live lease refuses a second run; a dead one is taken over."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from aver.lease import StoreBusyError, StoreLease, lease_url


def test_a_live_lease_refuses_a_second_writer_and_is_released(tmp_path):
    url = str(tmp_path / "s.zarr")
    with StoreLease(url) as first:
        assert Path(lease_url(url)).is_file()
        with pytest.raises(StoreBusyError, match="being written by another run") as e:
            StoreLease(url).acquire()
        assert first.owner in str(e.value) and e.value.exit_code == 7
    assert not Path(lease_url(url)).exists()
    StoreLease(url).acquire().release()  # free again


def test_a_dead_lease_is_taken_over(tmp_path, caplog):
    url = str(tmp_path / "s.zarr")
    Path(lease_url(url)).write_text(
        json.dumps({"owner": "gone:1", "started": 0, "heartbeat": time.time() - 999})
    )
    with caplog.at_level("WARNING"), StoreLease(url, ttl_s=60) as lease:
        assert lease.read()["owner"] == lease.owner
    assert any("taking over" in r.getMessage() for r in caplog.records)


def test_a_garbage_lease_file_is_not_trusted(tmp_path):
    url = str(tmp_path / "s.zarr")
    Path(lease_url(url)).write_bytes(b"\xff\xfe not json")
    StoreLease(url).acquire().release()


def test_the_heartbeat_keeps_the_lease_alive(tmp_path):
    url = str(tmp_path / "s.zarr")
    with StoreLease(url, ttl_s=0.4) as lease:
        first = lease.read()["heartbeat"]
        time.sleep(0.5)
        assert lease.read()["heartbeat"] > first
        with pytest.raises(StoreBusyError):
            StoreLease(url, ttl_s=0.4).acquire()


def test_lease_on_an_object_store_url():
    url = "memory://leases/t.zarr"
    with StoreLease(url):
        with pytest.raises(StoreBusyError):
            StoreLease(url).acquire()
    StoreLease(url).acquire().release()


def test_extraction_refuses_a_store_another_run_is_writing(small_corpus, tiny_config, tmp_path):
    from conftest import small_index

    from aver.extract.pipeline import run_extraction

    url = str(tmp_path / "busy.zarr")
    with StoreLease(url):
        with pytest.raises(StoreBusyError):
            run_extraction(tiny_config, small_index(small_corpus), url, progress=False)
    assert not Path(url).exists()  # refused before the template


def test_the_lease_of_a_killed_local_run_is_taken_over_at_once(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    owner = f"{socket.gethostname()}:{int(dead.stdout)}:abcd"
    url = str(tmp_path / "s.zarr")
    Path(lease_url(url)).write_text(
        json.dumps({"owner": owner, "started": time.time(), "heartbeat": time.time()})
    )
    StoreLease(url).acquire().release()


def test_a_symlink_to_a_store_shares_its_lease(tmp_path, monkeypatch):
    real = tmp_path / "data" / "s.zarr"
    real.mkdir(parents=True)
    (tmp_path / "link.zarr").symlink_to(real)
    (tmp_path / "linked-data").symlink_to(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    with StoreLease(str(real)) as first:
        assert Path(lease_url(str(real))) == real.parent / "s.zarr.lease.json"
        for other in ("link.zarr", str(tmp_path / "link.zarr") + "/", "linked-data/s.zarr", f"file://{real}"):
            assert lease_url(other) == lease_url(str(real))
            with pytest.raises(StoreBusyError, match=f"{other} is being written by another run") as e:
                StoreLease(other).acquire()
            assert first.owner in str(e.value)
    assert not list(tmp_path.rglob("*.lease.json"))
    with StoreLease("link.zarr"):  # and the other way round
        with pytest.raises(StoreBusyError):
            StoreLease(str(real)).acquire()


def test_url_spellings_of_a_store_share_its_lease():
    assert lease_url("memory://leases/u.zarr/") == lease_url("memory://leases/u.zarr")
    with StoreLease("memory://leases/u.zarr"):
        with pytest.raises(StoreBusyError):
            StoreLease("memory://leases/u.zarr/").acquire()
