"""Rate limits for what untrusted peers can make a daemon log.

A guest that sends bad input on purpose must not be able to fill dom0's disk through
our log: one warning per offending connection let a fuzzing guest write 1,200 lines a
second.  Daemons that face hostile clients (the kernel's printk_ratelimit, sshd,
syslog) bound such lines per source and say how many they dropped; so do we.

`TokenBucket` is the sans-IO core: a bucket per key (a domid), ``burst`` tokens, refilled
at ``rate`` a second by an injected clock, so tests never sleep.  `LimitedLog` puts a
logger behind it: a line goes out while its key has tokens; the ones that did not are
counted, and the next line that goes out (or `LimitedLog.flush`) is preceded by one
line saying how many were suppressed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

#: Defaults for log lines a guest's input causes: 10 at once, then one every 10 s.
BURST = 10
RATE = 0.1


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    suppressed: int = 0


@dataclass(frozen=True)
class Verdict:
    """Whether the event may go; ``suppressed``: events refused since the last that went."""

    allowed: bool
    suppressed: int = 0


class TokenBucket(Generic[K]):
    """One token bucket per key; memory stays bounded by forgetting idle, full buckets."""

    def __init__(
        self,
        rate: float = RATE,
        burst: int = BURST,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 4096,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate {rate} and burst {burst} must be positive")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[K, _Bucket] = {}

    def _refilled(self, key: K, now: float) -> _Bucket:
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_idle(now)
            b = self._buckets[key] = _Bucket(float(self.burst), now)
            return b
        if now > b.stamp:  # a clock that steps back refills nothing, then or later
            b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.rate)
            b.stamp = now
        return b

    def take(self, key: K) -> Verdict:
        """Spend a token of ``key`` if it has one."""
        b = self._refilled(key, self.clock())
        if b.tokens < 1:
            b.suppressed += 1
            return Verdict(False)
        b.tokens -= 1
        suppressed, b.suppressed = b.suppressed, 0
        return Verdict(True, suppressed)

    def pending(self, key: K) -> int:
        """Events of ``key`` refused and not reported yet; reporting them is the caller's."""
        b = self._buckets.get(key)
        if b is None:
            return 0
        n, b.suppressed = b.suppressed, 0
        return n

    def keys(self) -> list[K]:
        return list(self._buckets)

    def _forget_idle(self, now: float) -> None:
        """Drop buckets that are full again with nothing to report: a new one is equal."""
        for key in list(self._buckets):
            b = self._refilled(key, now)
            if b.tokens >= self.burst and not b.suppressed:
                del self._buckets[key]


class LimitedLog(Generic[K]):
    """A logger whose lines are rate-limited per key, with a count of what was dropped."""

    def __init__(
        self,
        logger: logging.Logger,
        bucket: TokenBucket[K] | None = None,
        describe: Callable[[K], str] = str,
    ) -> None:
        self.logger = logger
        self.bucket: TokenBucket[K] = bucket if bucket is not None else TokenBucket()
        self.describe = describe

    def log(self, key: K, level: int, msg: str, *args: object) -> None:
        if not self.logger.isEnabledFor(level):
            return  # a line nobody sees spends no token
        verdict = self.bucket.take(key)
        if not verdict.allowed:
            return
        if verdict.suppressed:
            self._summary(key, level, verdict.suppressed)
        self.logger.log(level, msg, *args)

    def flush(self, key: K | None = None, level: int = logging.WARNING) -> None:
        """Report what ``key`` (or every key) had suppressed, e.g. when a domain goes."""
        for k in [key] if key is not None else self.bucket.keys():
            n = self.bucket.pending(k)
            if n:
                self._summary(k, level, n)

    def _summary(self, key: K, level: int, n: int) -> None:
        self.logger.log(
            level, "%s: %d more log line(s) suppressed (rate limit)", self.describe(key), n
        )
