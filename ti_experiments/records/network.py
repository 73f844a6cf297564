"""Network calls with a deadline: a service that never answers (no network, a dead proxy, a firewall that
drops packets) costs a run a few seconds, never minutes."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Seconds a check before training may wait for W&B or the Hub: both answer in well under a second when up
DEADLINE = 8.0


class NoAnswer(TimeoutError):
    """The call did not return within its deadline (it may still be waiting, in a thread left behind)."""


def with_deadline(call: Callable[[], T], seconds: float = DEADLINE) -> T:
    """`call()`'s result or its exception, or NoAnswer after `seconds`. The call runs in a daemon thread, so
    a socket stuck without a timeout of its own cannot keep the process from moving on or exiting."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="ti-network-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise NoAnswer(f"no answer within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def answers(url: str, seconds: float = DEADLINE) -> bool:
    """Whether a web server answers at `url` within `seconds` (any HTTP status counts: it is there)."""

    def head():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=seconds).close()
        except urllib.error.HTTPError:
            pass
        return True

    try:
        return with_deadline(head, seconds)
    except (NoAnswer, OSError, ValueError):
        return False
