"""A built template's recorded disk chain (`disk_chain` in its meta.json): followed as written, refused
unless it is qcow2 layers over one raw file system; nothing of a layer's header is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wrenn.agent import _disk


def _template(tmp_path: Path, record: object) -> Path:
    directory = tmp_path / "templates" / "bld-1"
    directory.mkdir(parents=True)
    (directory / "rootfs.qcow2").write_bytes(b"")
    (directory / "meta.json").write_text(json.dumps({"disk_base": "/ignored", "disk_chain": record}))
    return directory / "rootfs.qcow2"


def test_a_recorded_chain_is_followed_as_written(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    chain = [(blobs / "b", "qcow2"), (blobs / "a", "qcow2"), (blobs / "root", "raw")]
    top = _template(tmp_path, _disk.chain_record(chain))
    assert _disk.backing_chain(top) == [(top, "qcow2"), *chain]


@pytest.mark.parametrize(
    "record",
    [
        "/etc/shadow",
        [],
        [["/blobs/a", "qcow2"]],  # no raw file system at the bottom
        [["/blobs/a", "raw"], ["/blobs/b", "raw"]],  # raw in the middle
        [["/blobs/a", "vmdk"], ["/blobs/b", "raw"]],
        [["", "raw"]],
        [[1, "raw"]],
        [["/blobs/a", "qcow2", "extra"], ["/blobs/b", "raw"]],
        [["/blobs/a", "qcow2"]] * _disk.MAX_RECORDED_CHAIN + [["/blobs/b", "raw"]],
    ],
)
def test_a_malformed_record_is_refused(tmp_path: Path, record: object) -> None:
    with pytest.raises(_disk.DiskError):
        _disk.backing_chain(_template(tmp_path, record))
