"""Connect codecs that turn an undecodable request into `invalid_argument` instead of a 500."""

from __future__ import annotations

from typing import Any, TypeVar

from connectrpc.code import Code
from connectrpc.codec import Codec, proto_binary_codec, proto_json_codec
from connectrpc.errors import ConnectError

_U = TypeVar("_U")


class _Strict:
    def __init__(self, inner: Codec[Any, Any]) -> None:
        self._inner = inner

    def name(self) -> str:
        return self._inner.name()

    def encode(self, message: Any) -> bytes:
        return self._inner.encode(message)

    def decode(self, data: bytes | bytearray, message_class: type[_U]) -> _U:
        try:
            return self._inner.decode(data, message_class)  # type: ignore[no-any-return]
        except ConnectError:
            raise
        except Exception as exc:  # noqa: BLE001 - the codecs raise many kinds of parse error
            raise ConnectError(
                Code.INVALID_ARGUMENT, f"cannot decode {message_class.__name__} as {self.name()}: {exc}"
            ) from None


def codecs() -> list[Codec[Any, Any]]:
    """JSON (what E2B clients send; unknown fields ignored) and binary protobuf."""
    return [_Strict(proto_json_codec()), _Strict(proto_binary_codec())]
