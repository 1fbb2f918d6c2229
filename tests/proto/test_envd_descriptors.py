"""Our envd .proto files against the descriptors shipped inside the official `e2b` wheel, field by field.

A difference here means an E2B client and envd disagree on the wire: a renamed field is silently dropped
by the JSON codec, a renumbered one corrupts binary messages.
"""

from __future__ import annotations

from typing import Any

import pytest
from e2b.envd.filesystem import filesystem_pb as e2b_filesystem
from e2b.envd.process import process_pb as e2b_process

from wrenn.proto.envd.filesystem import filesystem_pb as our_filesystem
from wrenn.proto.envd.process import process_pb as our_process

PAIRS = [(our_process, e2b_process), (our_filesystem, e2b_filesystem)]
FIELD_ATTRS = ("name", "number", "label", "type", "type_name", "json_name", "proto3_optional", "oneof_index")


def _fields(message: Any) -> dict[str, tuple[Any, ...]]:
    return {f.name: tuple(getattr(f, a) for a in FIELD_ATTRS) for f in message.proto.field}


def _messages(messages: Any, prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for m in messages:
        found[prefix + m.name] = m
        found.update(_messages(m.nested_messages, f"{prefix}{m.name}."))
    return found


def _map_entries(message: Any) -> list[str]:
    return sorted(n.name for n in message.proto.nested_type if n.options and n.options.map_entry)


def _enums(file: Any) -> dict[str, list[tuple[str, int]]]:
    enums = {e.name: e for e in file.enums}
    for m in _messages(file.messages).values():
        enums.update({f"{m.name}.{e.name}": e for e in m.nested_enums})
    return {name: [(v.name, v.number) for v in e.proto.value] for name, e in enums.items()}


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=["process", "filesystem"])
def test_files_match(ours: Any, theirs: Any) -> None:
    a, b = ours.desc(), theirs.desc()
    assert (a.name, a.proto.package, a.proto.syntax) == (b.name, b.proto.package, b.proto.syntax)
    assert [d.name for d in a.dependencies] == [d.name for d in b.dependencies]


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=["process", "filesystem"])
def test_messages_and_fields_match(ours: Any, theirs: Any) -> None:
    mine, e2b = _messages(ours.desc().messages), _messages(theirs.desc().messages)
    assert sorted(mine) == sorted(e2b)
    for name in e2b:
        assert _fields(mine[name]) == _fields(e2b[name]), name
        assert [o.name for o in mine[name].proto.oneof_decl] == [
            o.name for o in e2b[name].proto.oneof_decl
        ], name
        assert _map_entries(mine[name]) == _map_entries(e2b[name]), name


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=["process", "filesystem"])
def test_enums_match(ours: Any, theirs: Any) -> None:
    assert _enums(ours.desc()) == _enums(theirs.desc())


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=["process", "filesystem"])
def test_services_and_methods_match(ours: Any, theirs: Any) -> None:
    def shape(file: Any) -> dict[str, list[tuple[Any, ...]]]:
        return {
            s.type_name: [
                (m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
                for m in s.proto.method
            ]
            for s in file.services
        }

    assert shape(ours.desc()) == shape(theirs.desc())


def test_comparison_can_fail() -> None:
    """The comparison sees a difference when there is one (a check that cannot fail proves nothing)."""
    start = _messages(our_process.desc().messages)["StartRequest"]
    connect = _messages(e2b_process.desc().messages)["ConnectRequest"]
    assert _fields(start) != _fields(connect)
