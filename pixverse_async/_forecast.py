"""When a pending task will likely end, from its own hints checked against what the client has learnt.

Every poll costs a request and every second between a task's end and the poll that sees it costs the user,
so after each poll the shared poller asks this module when the next one pays off. Nothing the server says is
trusted blindly: `eta` may be missing (0 while running means "no estimate"), or consistently off for a task,
and `progress_percent` may stay 0, move in coarse steps, or sit still while the task is queued.

Per task (`Evidence`), the latest `eta` reading and the first and latest readings of progress. Per client
(`Forecaster`), learnt online from the tasks that ended: how far the server's `eta` is from the real finish
(mean and spread of the log of their ratio), the share of a task's life before its progress starts moving
(queueing), the progress step (the greatest common divisor of the values seen), and how long tasks take, by
kind (resolution and fast mode), as a hazard per age bin: ends seen at that age over task-seconds spent at
that age, so tasks still running count too and the first, shortest tasks to end do not make every other
task look late. Each statistic starts from a documented prior worth a few tasks, so a cold client is
cautious, not blind.

Each hint brackets the finish in a window `[lo, hi]`: `eta` scaled by the learnt ratio band, or, from two
readings, by how fast this task's eta counts down; progress by linear extrapolation with its quantisation (one
reading also needs the learnt queueing share, two readings only their slope). The windows are intersected;
when they contradict each other a measured progress slope wins, and without one the window is their union.
Inside a window the next poll steps `sqrt(2 * w / delay_cost)` into what is left of it (`w` seconds), at
least `1 / delay_cost`, and never past its end: for a narrow window that is one step to the end, for a wide
one a few steps, each balancing one more poll against the delay it saves. With no window (no usable hint),
the gap `g` to the next poll solves `delay_cost * g**2 * h / 2 = 1`, where `h` is the learnt hazard averaged
over the gap: sparse while few tasks of that age end, dense where many do. With webhooks, polls are only a
fallback for lost deliveries: each one comes when the tasks still running at that age would, by the learnt
durations, have ended with chance `1 - webhook_tail` (or shortly after the end the task's hints predict),
and the next one likewise from there.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING, Final, final

import attrs

if TYPE_CHECKING:
    from ._models import ImageToVideo, TextToVideo

#: Age bins of the duration model: bin i holds ages in [BIN_BASE**i, BIN_BASE**(i + 1)) seconds.
BIN_BASE: Final = 1.2
BIN_COUNT: Final = 48  # up to about 1.2**48 s, 2.4 hours; older tasks share the last bin
#: How many task-seconds of the prior every bin starts with (a few tasks' worth of evidence).
PRIOR_EXPOSURE: Final = 30.0
#: How many measurements' worth of weight the priors of the eta ratio and the queueing share carry: little, so
#: that a server whose hints are consistently right is soon trusted.
PRIOR_WEIGHT: Final = 0.2
#: Prior of the eta ratio: its log has mean 0 (the server is right on average) and this spread.
PRIOR_ETA_SPREAD: Final = 0.5
#: Prior of the share of a task's life spent before progress moves (queueing): mean and spread.
PRIOR_QUEUE_SHARE: Final = 0.1
PRIOR_QUEUE_SPREAD: Final = 0.15
#: How many spreads either side a learnt band reaches: three, so that all but a few tasks in a thousand fall
#: inside (with two, the one task in twenty outside the band was the p95 of the delay whenever the band was
#: trusted over another hint).
BAND: Final = 3.0
#: Two eta readings this far apart (seconds) tell how fast a task's eta counts down.
_SLOPE_SECONDS: Final = 8.0
#: ... and this far apart (seconds), how far off the server's eta is, for every task.
_CALIBRATION_SECONDS: Final = 16.0
#: A task's end is only used to calibrate hints when it is known this precisely (seconds, or share of life).
_PRECISE_END_SECONDS: Final = 1.0
_PRECISE_END_SHARE: Final = 0.05

Kind = Hashable


def kind_of(request: ImageToVideo | TextToVideo) -> Kind:
    """What decides how long a job takes, as far as the API says: its endpoint (text or image), resolution
    and fast mode."""
    return (type(request).__name__, request.resolution, request.fast_mode)


@attrs.define(slots=True)
class Evidence:
    """What one task's polls have shown; times are on the client's clock."""

    submitted_at: float
    kind: Kind = None
    #: Last poll that saw the task not finished (its end is after this).
    seen_running_at: float | None = None
    #: First and latest non-zero eta readings.
    first_eta_at: float | None = None
    first_eta: float | None = None
    eta_at: float | None = None
    eta: float | None = None
    #: First and latest readings with progress above 0.
    first_progress_at: float | None = None
    first_progress: float | None = None
    progress_at: float | None = None
    progress: float | None = None
    #: Up to which age this task's time is counted in the duration model.
    counted_to: float = 0.0

    @property
    def running_until(self) -> float:
        """Until when the task is known to have run: its last poll that saw it running, else its submission."""
        return self.seen_running_at if self.seen_running_at is not None else self.submitted_at

    def record(self, now: float, eta: float | None, progress: float | None) -> None:
        """A poll at `now` saw the task still running with these hints."""
        self.seen_running_at = now
        if eta is not None and eta > 0:
            if self.first_eta is None:
                self.first_eta_at, self.first_eta = now, eta
            self.eta_at, self.eta = now, eta
        else:
            self.eta_at = self.eta = None  # a vanished estimate is no estimate
        if progress is not None and 0 < progress < 100:
            if self.first_progress is None:
                self.first_progress_at, self.first_progress = now, progress
            self.progress_at, self.progress = now, progress


@final
@attrs.define(slots=True)
class RunningMean:
    """Mean and spread of a stream of measurements (Welford), blended with a prior worth `prior_weight` of them.

    Each measurement may come with the variance of its own error (rounding, say): the spread reported is that
    of the quantity measured, with the measurements' mean error variance taken out.
    """

    prior_mean: float
    prior_spread: float
    prior_weight: float = PRIOR_WEIGHT
    count: int = 0
    _mean: float = 0.0
    _m2: float = 0.0
    _noise: float = 0.0

    def add(self, value: float, noise_variance: float = 0.0) -> None:
        self.count += 1
        delta = value - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (value - self._mean)
        self._noise += noise_variance

    @property
    def mean(self) -> float:
        return (self.prior_weight * self.prior_mean + self.count * self._mean) / (self.prior_weight + self.count)

    @property
    def spread(self) -> float:
        variance = self.prior_weight * self.prior_spread**2 + max(0.0, self._m2 - self._noise)
        return math.sqrt(variance / (self.prior_weight + self.count))


def _bin(age: float) -> int:
    if age < 1.0:
        return 0
    return min(BIN_COUNT - 1, int(math.log(age) / math.log(BIN_BASE)))


def _bin_start(index: int) -> float:
    return 0.0 if index == 0 else BIN_BASE**index


def _bin_end(index: int) -> float:
    return math.inf if index == BIN_COUNT - 1 else BIN_BASE ** (index + 1)


_BIN_ENDS: Final = [BIN_BASE ** (index + 1) for index in range(BIN_COUNT - 1)] + [math.inf]


def _spans(from_age: float, to_age: float) -> Iterator[tuple[int, float, float]]:
    """The bins that the ages from `from_age` to `to_age` cross, with the part of each that they cover."""
    index, start = _bin(from_age), from_age
    while start < to_age:
        end = min(to_age, _bin_end(index))
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


@final
class DurationModel:
    """How long tasks of one kind take: a hazard per age bin, from ends seen over task-seconds at risk."""

    __slots__ = ("_exposure", "_partial", "_peaks", "_through", "ended", "ends")

    def __init__(self, prior_median: float, prior_sigma: float) -> None:
        self._peaks: list[float] | None = None
        self._exposure: list[float] | None = None
        self.ended = 0
        # Task-seconds at risk per bin, kept so that counting a task costs the same whatever its age: the bins
        # it crossed whole are two marks in `_through` (a difference array: +1 where they start, -1 where they
        # stop), the bins it entered or left part way are added to `_partial`. `exposure` sums them up.
        self._through = [0] * (BIN_COUNT + 1)
        self._partial = [PRIOR_EXPOSURE] * BIN_COUNT
        self.ends = []
        for index in range(BIN_COUNT):
            end = min(_bin_end(index), 10 * BIN_BASE**BIN_COUNT)
            middle = (_bin_start(index) + end) / 2
            self.ends.append(PRIOR_EXPOSURE * _lognormal_hazard(middle, prior_median, prior_sigma))

    def count(self, from_age: float, to_age: float) -> None:
        """A task was at risk (running, not seen ended) from `from_age` to `to_age` seconds of its life."""
        if to_age <= from_age:
            return
        self._peaks = self._exposure = None
        first, last = _bin(from_age), _bin(to_age)
        # Ages sit in their bin by `_bin`; its float log may put an age on a bin's edge one bin low or high.
        if last <= first:
            self._partial[first] += to_age - from_age
            return
        partial = self._partial
        partial[first] += max(0.0, _BIN_ENDS[first] - from_age)
        partial[last] += max(0.0, to_age - _BIN_ENDS[last - 1])
        if last > first + 1:
            self._through[first + 1] += 1
            self._through[last] -= 1

    @property
    def exposure(self) -> list[float]:
        """Task-seconds at risk per bin (the prior's included)."""
        exposure = self._exposure
        if exposure is None:
            exposure, crossing = [], 0
            for index in range(BIN_COUNT):
                crossing += self._through[index]
                width = _BIN_ENDS[index] - _bin_start(index) if index < BIN_COUNT - 1 else 0.0
                exposure.append(self._partial[index] + crossing * width)
            self._exposure = exposure
        return exposure

    def ended_at(self, age: float) -> None:
        self._peaks = None
        self.ended += 1
        self.ends[_bin(age)] += 1.0

    def hazard(self, age: float) -> float:
        """Ends per second per running task at `age`, never below the peak reached at younger ages.

        Past the bulk of the ends, few tasks are left and the raw estimate falls: a task already late is
        not polled more and more rarely for it.
        """
        peaks = self._peaks
        if peaks is None:
            peaks, best = [], 0.0
            for ends, exposure in zip(self.ends, self.exposure, strict=True):
                best = max(best, ends / exposure)
                peaks.append(best)
            self._peaks = peaks
        return peaks[_bin(age)]

    def mean_hazard(self, from_age: float, to_age: float) -> float:
        """`hazard` averaged over the ages from `from_age` to `to_age`."""
        if to_age <= from_age:
            return self.hazard(from_age)
        total = 0.0
        for index, start, end in _spans(from_age, to_age):
            total += (end - start) * self.hazard((start + end) / 2 if index < BIN_COUNT - 1 else start)
        return total / (to_age - from_age)

    def wait_until_survival(self, from_age: float, chance: float, at_most: float) -> float:
        """Seconds from `from_age` until a task running then is still running with only `chance` (at most
        `at_most`). The hazard is constant within a bin, so the cumulative hazard is walked once, bin by bin,
        and the bin where it reaches `-log(chance)` is solved exactly (once per task planned with webhooks on:
        a bisection over `survival_between` made that most of a webhook job's work)."""
        target = -math.log(chance)
        total = 0.0
        exposure = self.exposure
        for index, start, end in _spans(from_age, from_age + at_most):
            rate = self.ends[index] / exposure[index]
            step = (end - start) * rate
            if step > 0 and total + step >= target:
                return min(at_most, start + (target - total) / rate - from_age)
            total += step
        return at_most

    def survival_between(self, from_age: float, to_age: float) -> float:
        """The chance that a task running at `from_age` is still running at `to_age`."""
        total = 0.0
        for index, start, end in _spans(from_age, to_age):
            total += (end - start) * self.ends[index] / self.exposure[index]
        return math.exp(-total)


@final
class Forecaster:
    """What one client has learnt about the server's hints and its tasks' durations, and what it plans.

    `plan()` is the policy; everything else feeds it. Times are on the client's clock, in seconds.
    """

    def __init__(self, *, prior_median: float, prior_sigma: float) -> None:
        self._prior = (prior_median, prior_sigma)
        self._durations: dict[Kind, DurationModel] = {}
        self._all = DurationModel(prior_median, prior_sigma)
        self.eta_log_ratio = RunningMean(0.0, PRIOR_ETA_SPREAD)
        self.queue_share = RunningMean(PRIOR_QUEUE_SHARE, PRIOR_QUEUE_SPREAD)
        self._progress_step = 0  # gcd of every progress value seen; 0 before any
        self.ended = 0

    # -- learning -------------------------------------------------------------------------------------------

    def duration_model(self, kind: Kind) -> DurationModel:
        model = self._durations.get(kind) if kind is not None else None
        # A kind's own model once it has seen a few ends of its own; until then every kind's.
        return model if model is not None and model.ended >= 8 else self._all

    def running(self, evidence: Evidence, now: float, eta: float | None, progress: float | None) -> None:
        """A poll at `now` found the task still running with these hints."""
        self._count(evidence, now - evidence.submitted_at)
        first, first_at = evidence.first_eta, evidence.first_eta_at
        if (
            eta is not None
            and first is not None
            and first_at is not None
            and evidence.eta_at == first_at  # this is the task's second eta reading: learn from it once
            and now - first_at >= _CALIBRATION_SECONDS
            and first > eta > 0
        ):
            # A task's eta counts down `factor` times too fast when it says `factor` times the truth. Both
            # readings are rounded up to whole seconds: their difference is off by up to 1 (variance 1/6).
            counted = first - eta
            self.eta_log_ratio.add(math.log((now - first_at) / counted), 1 / (6 * counted * counted))
        evidence.record(now, eta, progress)
        if progress is not None and 0 < progress < 100:
            self._progress_step = math.gcd(self._progress_step, int(progress))

    def ended_between(self, evidence: Evidence, seen_running_at: float | None, seen_ended_at: float) -> None:
        """A task ended after `seen_running_at` (None: unknown) and before `seen_ended_at`."""
        lower = seen_running_at if seen_running_at is not None else evidence.submitted_at
        end = (lower + seen_ended_at) / 2
        age = end - evidence.submitted_at
        self._count(evidence, age)
        self.ended += 1
        for model in self._models(evidence.kind):
            model.ended_at(age)
        if seen_ended_at - lower > max(_PRECISE_END_SECONDS, _PRECISE_END_SHARE * age):
            return  # the end is too vague to say how right the hints were
        # The first readings: the furthest from the end, so the least blurred by rounding.
        eta, eta_at = evidence.first_eta, evidence.first_eta_at
        vagueness = (seen_ended_at - lower) ** 2 / 12  # the end is somewhere between the two polls
        if eta is not None and eta_at is not None and eta >= 3 and end > eta_at:
            remaining = end - eta_at
            self.eta_log_ratio.add(math.log(remaining / (eta - 0.5)), vagueness / remaining**2 + 1 / (12 * eta * eta))
        progress, progress_at = evidence.first_progress, evidence.first_progress_at
        if progress is not None and progress_at is not None and age > 0 and progress < 90:
            share = (progress + self.progress_step / 2) / 100
            started = (progress_at - share * end) / (1 - share)
            # A rounded reading is off by up to a step; the end by up to the gap between the last two polls.
            blur = (self.progress_step / 100 * (end - progress_at) / (1 - share) ** 2) ** 2 / 12
            noise = (blur + vagueness * (share / (1 - share)) ** 2) / (age * age)
            self.queue_share.add(min(1.0, max(0.0, (started - evidence.submitted_at) / age)), noise)

    def _models(self, kind: Kind) -> list[DurationModel]:
        if kind is None:
            return [self._all]
        model = self._durations.get(kind)
        if model is None:
            model = self._durations[kind] = DurationModel(*self._prior)
        return [self._all, model]

    def _count(self, evidence: Evidence, age: float) -> None:
        if age > evidence.counted_to:
            for model in self._models(evidence.kind):
                model.count(evidence.counted_to, age)
            evidence.counted_to = age

    @property
    def progress_step(self) -> int:
        """The step progress moves in, as far as seen (1 until a coarser one shows)."""
        return self._progress_step if 1 < self._progress_step < 100 else 1

    # -- predicting -----------------------------------------------------------------------------------------

    def window(self, evidence: Evidence) -> tuple[float, float] | None:
        """When the task will likely end, `(lo, hi)` on the client's clock, from its hints; None without any."""
        from_eta = self._eta_window(evidence)
        from_progress = self._progress_window(evidence)
        if from_eta is None or from_progress is None:
            found = from_eta or from_progress
        else:
            lo, hi = max(from_eta[0], from_progress[0]), min(from_eta[1], from_progress[1])
            # When they disagree, a measured slope beats both; otherwise either may be the wrong one.
            if self._progress_slope_known(evidence):
                disagreeing = from_progress
            else:
                disagreeing = (min(from_eta[0], from_progress[0]), max(from_eta[1], from_progress[1]))
            found = (lo, hi) if lo <= hi else disagreeing
        if found is None:
            return None
        floor = evidence.running_until
        return max(found[0], floor), max(found[1], floor)

    @staticmethod
    def _progress_slope_known(evidence: Evidence) -> bool:
        first, latest = evidence.first_progress, evidence.progress
        return first is not None and latest is not None and latest > first

    def _eta_window(self, evidence: Evidence) -> tuple[float, float] | None:
        eta, at = evidence.eta, evidence.eta_at
        if eta is None or at is None:
            return None
        first, first_at = evidence.first_eta, evidence.first_eta_at
        if first is not None and first_at is not None and at - first_at >= _SLOPE_SECONDS and first > eta:
            # Two readings: how fast this task's eta counts down tells how far off it is, whatever the server's
            # habit (each reading is rounded up to a whole second, hence the +-1).
            elapsed = at - first_at
            fastest, slowest = (first - eta + 1) / elapsed, max(first - eta - 1, 0.5) / elapsed
            return at + max(0.0, eta - 1) / fastest, at + eta / slowest
        ratio = self.eta_log_ratio
        low = math.exp(ratio.mean - BAND * ratio.spread)
        high = math.exp(ratio.mean + BAND * ratio.spread)
        # The server rounds eta up to whole seconds: the true remaining time is in (eta - 1, eta].
        return at + max(0.0, eta - 1) * low, at + eta * high

    def _progress_window(self, evidence: Evidence) -> tuple[float, float] | None:
        progress, at = evidence.progress, evidence.progress_at
        if progress is None or at is None:
            return None
        step = self.progress_step
        first, first_at = evidence.first_progress, evidence.first_progress_at
        if first is not None and first_at is not None and progress > first and at > first_at:
            # Two readings: the slope, whatever the queueing before them. Each reading is rounded down.
            elapsed = at - first_at
            fastest = (progress - first + step) / elapsed
            slowest = max(progress - first - step, step / 2) / elapsed
            return at + max(0.0, 100 - progress - step) / fastest, at + (100 - progress) / slowest
        # One reading: its share of the task's life, less the learnt share spent queued.
        age = at - evidence.submitted_at
        share = self.queue_share
        queue_low = min(0.9, max(0.0, share.mean - BAND * share.spread))
        queue_high = min(0.9, max(0.0, share.mean + BAND * share.spread))
        done_low, done_high = progress / 100, min(1.0, (progress + step) / 100)
        lo = age / (done_high * (1 - queue_high) + queue_high)
        hi = age / (done_low * (1 - queue_low) + queue_low)
        return evidence.submitted_at + lo, evidence.submitted_at + hi

    # -- planning -------------------------------------------------------------------------------------------

    def next_poll(
        self,
        evidence: Evidence,
        now: float,
        *,
        delay_cost: float,
        min_interval: float,
        max_interval: float,
        jitter: float,
        random_fraction: float,
    ) -> float:
        """When to poll the task next (clock time), having just seen it running at `now`.

        Never sooner than `min_interval` from now, never later than `max_interval`; jitter (a share `jitter`
        of the wait, `random_fraction` in [0, 1)) only ever brings a poll earlier, and never before the
        window opens.
        """
        window = self.window(evidence)
        patience = 1.0 / delay_cost
        age = now - evidence.submitted_at
        if window is None or window[1] <= now:
            gap = self.gap_without_hints(evidence.kind, age, delay_cost, min_interval, max_interval)
            if window is not None:  # the hints said it would be over by now: look sooner while they may be near
                gap = min(gap, max(patience, (now - window[1]) / 4))
            due = now + gap * (1.0 - jitter * random_fraction)
        else:
            # The finish is somewhere in the window: a wide one is crossed in a few steps, each the longer the
            # more of the window is left (sqrt(2 w / cost) balances a poll against the delay it saves), a
            # narrow one in one step to its end.
            lo, hi = window
            earliest = max(now, lo)
            step = max(patience, math.sqrt(2 * (hi - earliest) * patience))
            aim = min(hi, earliest + step)
            due = aim - jitter * random_fraction * (aim - earliest)
        return min(now + max_interval, max(now + min_interval, due))

    def gap_without_hints(
        self, kind: Kind, age: float, delay_cost: float, min_interval: float, max_interval: float
    ) -> float:
        """The wait `g` that solves `delay_cost * g**2 * h / 2 = 1`, within the bounds, where `h` is the hazard
        averaged over the wait: a poll is worth making once the delay it saves, on average, costs as much."""
        model = self.duration_model(kind)

        def excess(gap: float) -> float:
            return delay_cost * gap * gap * model.mean_hazard(age, age + gap) / 2 - 1

        if excess(max_interval) <= 0:
            return max_interval
        if excess(min_interval) >= 0:
            return min_interval
        low, high = min_interval, max_interval
        for _ in range(20):
            middle = (low + high) / 2
            if excess(middle) < 0:
                low = middle
            else:
                high = middle
        return low

    def webhook_fallback(self, kind: Kind, age: float, tail: float, max_wait: float) -> float:
        """Seconds from `age` until a task still running would have ended with chance `1 - tail` (at most
        `max_wait`)."""
        return self.duration_model(kind).wait_until_survival(age, tail, max_wait)
