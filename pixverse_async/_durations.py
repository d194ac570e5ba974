"""How long tasks of one kind take, learnt online from what polls saw: a hazard per log-age bin.

The model holds, per bin of a task's age (bins widen by 1.2x from a quarter of a second), the ends seen at
that age and the task-seconds spent at it (running tasks count too, so the first, shortest tasks to end do
not make every other task look late); their ratio is the hazard, ends per second per task still running.

A poll never sees an end, only that a task has ended since the last poll: the end lies somewhere between
the poll that last saw it running and the poll that saw it ended (an interval-censored observation). Each
such end is shared out over the bins of that interval in proportion to how likely the model, as learnt so
far, makes each part of it (one step of the self-consistency, or EM, estimate of interval-censored data),
and so is the time the task may have spent there. The latest ends are kept and shared out again (a few
rounds of the same step, each by the hazard the previous round made) whenever the ends learnt double, so
that an end learnt while little was known is placed by what is known now. A client whose first polls come
late therefore does not learn that tasks are long: an end first seen at 12 s, when other tasks showed that
most end near 2 s, is counted near 2 s, not at 6 s, the middle of the interval.

Before anything is learnt the model starts from a prior worth half a task. Without a hint from the user it is
scale-free: a hazard of `0.15 / (age + 0.5 s)`, the same odds of ending in every doubling of a task's age,
so a new client's first poll comes within a few seconds and its later polls spread out as tasks age, for
tasks of two seconds as well as of ten minutes. Told a typical duration (`PollPolicy.expected_duration`),
it starts from a log-normal around it instead, worth eight tasks.

Only the learnt counts (not the prior) are shared with other clients (`statistics`, `set_remote`): they are
sums, so that what several clients learnt adds up.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator, Sequence
from typing import Final, final

#: Bin 0 holds ages below BIN_FLOOR; bin i >= 1 ages in [BIN_FLOOR * BIN_BASE**(i-1), BIN_FLOOR * BIN_BASE**i).
BIN_FLOOR: Final = 0.25
BIN_BASE: Final = 1.2
BIN_COUNT: Final = 58  # up to about 0.25 * 1.2**57, 8 hours; older tasks share the last bin
#: The scale-free prior: hazard SCALE_FREE_RATE / (age + SCALE_FREE_OFFSET), worth PRIOR_TASKS tasks.
SCALE_FREE_RATE: Final = 0.15
SCALE_FREE_OFFSET: Final = 0.5
PRIOR_TASKS: Final = 0.5
#: A told duration's prior (log-normal) is worth this many tasks.
TOLD_PRIOR_TASKS: Final = 8.0
#: The latest ends kept to be shared out again, when the ends learnt reach 8, 16, 32, ... and every
#: _KEPT_INTERVALS after that, in _REFIT_ROUNDS rounds.
_KEPT_INTERVALS: Final = 2048
_REFIT_FROM: Final = 8
_REFIT_ROUNDS: Final = 4

_LOG_BASE: Final = math.log(BIN_BASE)
_STARTS: Final = [0.0] + [BIN_FLOOR * BIN_BASE ** (index - 1) for index in range(1, BIN_COUNT)]
_ENDS: Final = [BIN_FLOOR * BIN_BASE**index for index in range(BIN_COUNT - 1)] + [math.inf]
#: A width for the last, open bin where the prior needs one.
_WIDTHS: Final = [end - start for start, end in zip(_STARTS[:-1], _ENDS[:-1], strict=True)] + [
    _STARTS[-1] * (BIN_BASE - 1)
]


def bin_of(age: float) -> int:
    if age < BIN_FLOOR:
        return 0
    index = 1 + int(math.log(age / BIN_FLOOR) / _LOG_BASE)
    return index if index < BIN_COUNT else BIN_COUNT - 1


def _spans(from_age: float, to_age: float) -> Iterator[tuple[int, float, float]]:
    """The bins that the ages from `from_age` to `to_age` cross, with the part of each that they cover."""
    index, start = bin_of(from_age), from_age
    while start < to_age:
        end = min(to_age, _ENDS[index])
        if end > start:
            yield index, start, end
        start, index = max(start, end), index + 1


def _lognormal_hazard(age: float, median: float, sigma: float) -> float:
    """The hazard (ends per second per task still running) of a log-normal duration at `age`."""
    if age <= 0:
        return 0.0
    z = (math.log(age) - math.log(median)) / sigma
    density = math.exp(-0.5 * z * z) / (age * sigma * math.sqrt(2 * math.pi))
    survival = 0.5 * math.erfc(z / math.sqrt(2))
    return density / survival if survival > 1e-12 else 1.0 / (sigma * sigma * age) * max(z, 1.0)


def prior(median: float | None, sigma: float) -> tuple[list[float], list[float]]:
    """Ends and task-seconds per bin of the prior: scale-free without a `median`, else log-normal."""
    ends, exposure = [], []
    for index in range(BIN_COUNT):
        start, width = _STARTS[index], _WIDTHS[index]
        middle = start + width / 2
        if median is None:
            tasks, hazard = PRIOR_TASKS, SCALE_FREE_RATE / (middle + SCALE_FREE_OFFSET)
        else:
            tasks, hazard = TOLD_PRIOR_TASKS, _lognormal_hazard(middle, median, sigma)
        exposure.append(tasks * width)
        ends.append(tasks * width * hazard)
    return ends, exposure


@final
class DurationModel:
    """How long tasks of one kind take: a hazard per age bin, from ends seen over task-seconds at risk."""

    __slots__ = (
        "_exposure",
        "_intervals",
        "_kept_ends",
        "_kept_exposure",
        "_partial",
        "_peaks",
        "_prior_ends",
        "_prior_exposure",
        "_rates",
        "_remote_ended",
        "_remote_ends",
        "_remote_exposure",
        "_through",
        "ends",
        "local_ended",
    )

    def __init__(self, prior_ends: Sequence[float], prior_exposure: Sequence[float]) -> None:
        self._prior_ends = list(prior_ends)
        self._prior_exposure = list(prior_exposure)
        #: Ends learnt here, per bin (shares of ends, since each is shared out over its interval).
        self.ends = [0.0] * BIN_COUNT
        self.local_ended = 0
        # Task-seconds at risk per bin, kept so that counting a task costs the same whatever its age: the bins
        # it crossed whole are two marks in `_through` (a difference array: +1 where they start, -1 where they
        # stop), the bins it entered or left part way are added to `_partial`. `exposure` sums them up.
        self._through = [0] * (BIN_COUNT + 1)
        self._partial = [0.0] * BIN_COUNT
        self._remote_ends = [0.0] * BIN_COUNT
        self._remote_exposure = [0.0] * BIN_COUNT
        self._remote_ended = 0.0
        # The ends kept to be shared out again (`refit`), and what sharing them out added.
        self._intervals: collections.deque[tuple[float, float, list[tuple[int, float, float]]]] = collections.deque()
        self._kept_ends = [0.0] * BIN_COUNT
        self._kept_exposure = [0.0] * BIN_COUNT
        self._exposure: list[float] | None = None
        self._rates: list[float] | None = None
        self._peaks: list[float] | None = None

    @property
    def ended(self) -> float:
        """Ends learnt, here and (shared) by other clients."""
        return self.local_ended + self._remote_ended

    def _changed(self) -> None:
        self._exposure = self._rates = self._peaks = None

    def count(self, from_age: float, to_age: float) -> None:
        """A task was at risk (running, not seen ended) from `from_age` to `to_age` seconds of its life."""
        if to_age <= from_age:
            return
        self._changed()
        first, last = bin_of(from_age), bin_of(to_age)
        if last <= first:
            self._partial[first] += to_age - from_age
            return
        partial = self._partial
        partial[first] += max(0.0, _ENDS[first] - from_age)
        partial[last] += max(0.0, to_age - _ENDS[last - 1])
        if last > first + 1:
            self._through[first + 1] += 1
            self._through[last] -= 1

    def ended_between(self, lower: float, upper: float) -> None:
        """A task seen running at age `lower` (counted up to there) was seen ended at age `upper`."""
        self.local_ended += 1
        if len(self._intervals) == _KEPT_INTERVALS:
            # The oldest kept end stays where it was last shared out, for good.
            for index, part, exposure in self._intervals.popleft()[2]:
                self._kept_ends[index] -= part
                self._kept_exposure[index] -= exposure
        self._intervals.append((lower, upper, self._share_out(lower, upper, self.rates)))
        ended = self.local_ended
        if (ended >= _REFIT_FROM and ended & (ended - 1) == 0) or ended % _KEPT_INTERVALS == 0:
            self.refit()

    def refit(self) -> None:
        """Share the kept ends out again, over and over, by the hazard they make together (EM): an end shared
        out while little was known is placed again with what is known now."""
        for _ in range(_REFIT_ROUNDS):
            rates = self.rates
            for index in range(BIN_COUNT):
                self.ends[index] -= self._kept_ends[index]
                self._partial[index] -= self._kept_exposure[index]
            self._kept_ends = [0.0] * BIN_COUNT
            self._kept_exposure = [0.0] * BIN_COUNT
            self._intervals = collections.deque(
                (lower, upper, self._share_out(lower, upper, rates)) for lower, upper, _ in self._intervals
            )
            self._changed()

    def _share_out(self, lower: float, upper: float, rates: Sequence[float]) -> list[tuple[int, float, float]]:
        """Count one end between ages `lower` and `upper` by `rates`: what it added, by bin."""
        self._changed()
        spans = list(_spans(lower, upper))
        if not spans:
            spans = [(bin_of(upper), upper, upper)]
        # The chance that the end fell in each span, by the hazard learnt so far.
        survival, shares = 1.0, []
        for index, start, end in spans:
            share = survival * -math.expm1(-rates[index] * (end - start))
            shares.append(share)
            survival -= share
        total = 1.0 - survival
        if total <= 0.0:  # a point, or spans the model gives no chance: by their length (or all in one)
            shares = [end - start for _, start, end in spans]
            total = sum(shares)
            if total <= 0.0:
                shares, total = [1.0] + [0.0] * (len(spans) - 1), 1.0
        added, later = [], 1.0
        for (index, start, end), share in zip(spans, shares, strict=True):
            part = share / total
            later -= part
            # Time at risk there: all of the span if it ended later, about half if it ended there.
            exposure = (end - start) * (max(0.0, later) + part / 2)
            self.ends[index] += part
            self._partial[index] += exposure
            self._kept_ends[index] += part
            self._kept_exposure[index] += exposure
            added.append((index, part, exposure))
        return added

    @property
    def exposure(self) -> list[float]:
        """Task-seconds at risk per bin, learnt here and by other clients (not the prior's)."""
        exposure = self._exposure
        if exposure is None:
            exposure, crossing = [], 0
            for index in range(BIN_COUNT):
                crossing += self._through[index]
                width = _WIDTHS[index] if index < BIN_COUNT - 1 else 0.0
                exposure.append(self._partial[index] + crossing * width + self._remote_exposure[index])
            self._exposure = exposure
        return exposure

    @property
    def rates(self) -> list[float]:
        """The hazard per bin, prior included."""
        rates = self._rates
        if rates is None:
            rates = [
                (prior_ends + ends + remote) / (prior_exposure + exposure)
                for prior_ends, ends, remote, prior_exposure, exposure in zip(
                    self._prior_ends, self.ends, self._remote_ends, self._prior_exposure, self.exposure, strict=True
                )
            ]
            self._rates = rates
        return rates

    def hazard(self, age: float) -> float:
        """Ends per second per running task at `age`, never below the peak reached at younger ages where
        tasks were seen to end.

        Past the bulk of the ends, few tasks are left and the raw estimate falls: a task already late is
        not polled more and more rarely for it. The prior's own hazard, high at the youngest ages, is not
        such a peak.
        """
        peaks = self._peaks
        if peaks is None:
            peaks, best = [], 0.0
            for rate, ends, remote in zip(self.rates, self.ends, self._remote_ends, strict=True):
                peaks.append(max(best, rate))
                if ends + remote >= 0.5:
                    best = max(best, rate)
            self._peaks = peaks
        return peaks[bin_of(age)]

    def mean_hazard(self, from_age: float, to_age: float) -> float:
        """`hazard` averaged over the ages from `from_age` to `to_age`."""
        if to_age <= from_age:
            return self.hazard(from_age)
        total = 0.0
        for index, start, end in _spans(from_age, to_age):
            total += (end - start) * self.hazard((start + end) / 2 if index < BIN_COUNT - 1 else start)
        return total / (to_age - from_age)

    def survival_between(self, from_age: float, to_age: float) -> float:
        """The chance that a task running at `from_age` is still running at `to_age`."""
        rates = self.rates
        total = 0.0
        for index, start, end in _spans(from_age, to_age):
            total += (end - start) * rates[index]
        return math.exp(-total)

    def quantile(self, fraction: float) -> float:
        """The age by which a share `fraction` of tasks have ended."""
        target, total = -math.log1p(-fraction), 0.0
        for index, rate in enumerate(self.rates):
            width = _WIDTHS[index]
            if total + rate * width >= target or index == BIN_COUNT - 1:
                return _STARTS[index] + (target - total) / rate if rate > 0 else _STARTS[index]
            total += rate * width
        return _STARTS[-1]  # pragma: no cover - the loop returns at the last bin

    # -- sharing with other clients -------------------------------------------------------------------------

    def statistics(self) -> tuple[list[float], list[float]]:
        """The ends and task-seconds learnt here (not the prior, not other clients'), per bin."""
        exposure, crossing = [], 0
        for index in range(BIN_COUNT):
            crossing += self._through[index]
            width = _WIDTHS[index] if index < BIN_COUNT - 1 else 0.0
            exposure.append(self._partial[index] + crossing * width)
        return list(self.ends), exposure

    def set_remote(self, ends: Sequence[float], exposure: Sequence[float], ended: float) -> None:
        """What other clients learnt (their sums), to count with this client's own."""
        self._remote_ends = list(ends)
        self._remote_exposure = list(exposure)
        self._remote_ended = ended
        self._changed()
