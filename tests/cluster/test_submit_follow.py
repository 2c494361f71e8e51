"""``submit --wait`` tells a restarting storage from an answer, by status code."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from worker.cluster.submit import _Follower


class _Status(grpc.RpcError):  # type: ignore[misc]  # grpc ships no type for RpcError
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


@pytest.fixture
def follower() -> Iterator[_Follower]:
    # Never dialled: the calls below are fakes.
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        follower = _Follower(channel, "127.0.0.1:1", job_id=1, session=1, idle_hint_sec=10.0)
        follower._deadline = time.monotonic() + 30.0
        yield follower


@pytest.mark.parametrize(
    "code",
    # CANCELLED is what a storage stopping without grace answers the calls in flight.
    [grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED],
)
def test_a_restarting_storage_is_retried(follower: _Follower, code: grpc.StatusCode) -> None:
    failures = [_Status(code), _Status(code)]

    def rpc() -> str:
        if failures:
            raise failures.pop()
        return "answer"

    assert follower._call(rpc) == "answer"


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL]
)
def test_an_answer_is_not_retried(follower: _Follower, code: grpc.StatusCode) -> None:
    calls = 0

    def rpc() -> str:
        nonlocal calls
        calls += 1
        raise _Status(code)

    with pytest.raises(grpc.RpcError):
        follower._call(rpc)
    assert calls == 1
