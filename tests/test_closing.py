"""Unit tests of `Closing`: what ends the waits between attempts when a channel closes."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from clarifai_interceptor import RetryPolicy
from clarifai_interceptor._attempts import Attempts, Wait
from clarifai_interceptor._closing import CLOSED_DETAILS, CancelledCall, Closing, closed

T = 10


def test_close_wakes_every_sleeper_at_once_and_later_sleeps_return_at_once() -> None:
    closing = Closing()
    woke: list[bool] = []
    sleepers = [threading.Thread(target=lambda: woke.append(closing.sleep(60))) for _ in range(5)]
    for sleeper in sleepers:
        sleeper.start()
    time.sleep(0.05)
    closing.close()
    for sleeper in sleepers:
        sleeper.join(T)
    assert woke == [True] * 5
    assert closing.sleep(60) is True  # closed already: no wait at all
    closing.close()  # idempotent


def test_an_open_channel_sleeps_the_whole_wait() -> None:
    closing = Closing()
    assert closing.sleep(0) is False
    assert closing.sleep(0.01) is False


def test_watchers_are_woken_once_and_unwatched_ones_never() -> None:
    closing = Closing()
    seen: list[str] = []
    closing.watch(lambda: seen.append("a"))
    unwatch = closing.watch(lambda: seen.append("b"))
    unwatch()
    closing.close()
    closing.close()
    assert seen == ["a"]
    closing.watch(lambda: seen.append("late"))  # after the close: woken at once
    assert seen == ["a", "late"]


class _Unavailable(grpc.RpcError):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def trailing_metadata(self) -> tuple[()]:
        return ()


UNAVAILABLE = _Unavailable()


def test_a_call_ended_by_a_close_is_cancelled_and_counts_only_the_attempts_sent() -> None:
    error = closed()
    assert isinstance(error, CancelledCall)
    assert isinstance(error, grpc.RpcError)
    assert (error.code(), error.details()) == (grpc.StatusCode.CANCELLED, CLOSED_DETAILS)
    closing = Closing()
    attempts = Attempts(RetryPolicy(jitter=0), "M", None, closing=closing)
    flow = attempts.flow(UNAVAILABLE)  # the first attempt failed; the second is waited for
    wait = next(flow)
    assert isinstance(wait, Wait)
    closing.close()
    ended = attempts.sleep(wait.seconds)
    assert ended is not None
    assert ended.details() == CLOSED_DETAILS
    with pytest.raises(StopIteration) as stop:
        flow.send(ended)
    assert stop.value.value is ended
    assert (attempts.number, attempts.sent) == (1, 1)
