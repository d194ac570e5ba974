"""When a pending task will likely end, from its own hints checked against what the client has learnt.

Every poll costs a request and every second between a task's end and the poll that sees it costs the user,
so after each poll the shared poller asks this module when the next one pays off. Nothing the server says is
trusted blindly: `eta` may be missing (0 while running means "no estimate"), or consistently off for a task,
and `progress_percent` may stay 0, move in coarse steps, or sit still while the task is queued.

Per task (`Evidence`), the latest `eta` reading and the first and latest readings of progress. Per client
(`Forecaster`), learnt online from the tasks that ended: how far the server's `eta` is from the real finish
(mean and spread of the log of their ratio), the share of a task's life before its progress starts moving
(queueing), the progress step (the greatest common divisor of the values seen), how often a first poll reads
a hint, and how long tasks take, by kind (resolution and fast mode), in `_durations.py` (a hazard per age
bin, learnt from interval-censored ends, from a scale-free prior: nothing needs telling). Each statistic
starts from a documented prior worth a few tasks or less, so a cold client is cautious, not blind.

The eta ratio is learnt from one task in `EXPLORE_EVERY` that reads an eta: that task is read again early
(at `EXPLORE_SHARE` of its eta), and its countdown tells how far off its eta was; one that ended before that
second reading tells it by its end, as a ratio known to lie between two bounds (its expected value and
variance there by the normal learnt so far: a step of EM). The other tasks are read again when their eta says
they end, so a task whose eta says too much is read only once it ended: learning from the tasks read in time
would learn that etas say too little, trust that, and read the others later still.

The first poll of a task comes early while first polls usually read a hint (until shown otherwise), before
all but `FIRST_READ_SHARE` of tasks would have ended by the learnt durations: that poll reads the eta or
progress that places the next one at the finish. Without hints it is planned like any later poll.

Each hint brackets the finish in a window `[lo, hi]`: `eta` scaled by the learnt ratio band, or, from two
readings, by how fast this task's eta counts down; progress by linear extrapolation with its quantisation (one
reading also needs the learnt queueing share, two readings only their slope). The windows are intersected;
when they contradict each other a measured progress slope wins, and without one the window is their union.
A second of delay is worth `cost` polls: `delay_cost` for tasks up to `DELAY_SCALE` seconds long, less in
proportion for longer ones (the task's age, the earliest end its hints allow, or the learnt median, whichever
is longest), since a delay is felt as a share of the wait. Inside a window the next poll steps
`sqrt(2 * w / cost)` into what is left of it (`w` seconds), at least `1 / cost`, and never past its end: for
a narrow window that is one step to the end, for a wide one a few steps, each balancing one more poll against
the delay it saves. With no window (no usable hint), the gap `g` to the next poll solves
`cost * g**2 * h / 2 = 1`, where `h` is the learnt hazard averaged over the gap: sparse while few tasks of
that age end, dense where many do, and never longer than the task's age or `NO_HINT_LONGEST` (unless a
`max_interval` is given): however little is known, a task is looked at again before its age has doubled.
With webhooks, polls are only a fallback for lost deliveries: each one comes when the tasks still running
at that age would, by the learnt durations, have ended with chance `1 - webhook_tail` (or shortly after the
end the task's hints predict), and the next one likewise from there.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import TYPE_CHECKING, Final, final

import attrs

from ._durations import DurationModel, prior

if TYPE_CHECKING:
    from ._models import ImageToVideo, TextToVideo

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
#: ... and this far apart (seconds), how far off the server's eta is (each reading rounded: +-1 s of 16).
_CALIBRATION_SECONDS: Final = 16.0
#: A task's end is only used to calibrate hints when it is known this precisely (seconds, or share of life).
_PRECISE_END_SECONDS: Final = 1.0
_PRECISE_END_SHARE: Final = 0.05
#: Tasks up to this long (seconds) value a second of delay at the full `delay_cost`; longer ones less.
DELAY_SCALE: Final = 30.0
#: One task in this many that read an eta is read again early (at EXPLORE_SHARE of its eta, and at least
#: _CALIBRATION_SECONDS later), to learn without bias how right the server's etas are.
EXPLORE_EVERY: Final = 8
EXPLORE_SHARE: Final = 0.3
#: With hints expected, the first poll comes before all but this share of tasks would have ended.
FIRST_READ_SHARE: Final = 0.02
#: Without hints, a task waits at most its age or this long (seconds) between polls, unless told otherwise.
NO_HINT_LONGEST: Final = 60.0
#: With hints, at most WINDOW_GROWTH times its age or this long (seconds): an eta far off is still checked.
WINDOW_LONGEST: Final = 600.0
WINDOW_GROWTH: Final = 4.0

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
    #: This task is one of those read a second time early, to learn how right etas are (see `running`).
    explores: bool = False
    #: This task already taught the forecaster how right its eta was.
    calibrated: bool = False

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


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def _normal_pdf(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) if math.isfinite(z) else 0.0


@final
@attrs.define(slots=True)
class RunningMean:
    """Mean and spread of a stream of measurements, blended with a prior worth `prior_weight` of them.

    Each measurement may come with the variance of its own error (rounding, say): the spread reported is that
    of the quantity measured, with the measurements' mean error variance taken out. The prior's share of the
    spread fades faster than its share of the mean (by the square root of its weight over theirs), so that a
    server whose hints are consistently right is soon trusted. Kept as sums, so that what other clients
    measured adds up (`remote`).
    """

    prior_mean: float
    prior_spread: float
    prior_weight: float = PRIOR_WEIGHT
    #: count, sum, sum of squares and error variance of the measurements made here.
    sums: list[float] = attrs.field(factory=lambda: [0.0, 0.0, 0.0, 0.0])
    #: The same sums of other clients' measurements.
    remote: list[float] = attrs.field(factory=lambda: [0.0, 0.0, 0.0, 0.0])

    def add(self, value: float, noise_variance: float = 0.0, unknown_variance: float = 0.0) -> None:
        """One measurement; `unknown_variance`: what is left unknown of a value known only to lie in an
        interval (`value` its expected value there), which counts towards the spread."""
        sums = self.sums
        sums[0] += 1
        sums[1] += value
        sums[2] += value * value + unknown_variance
        sums[3] += noise_variance

    def add_between(self, low: float, high: float) -> None:
        """A measurement known only to lie between `low` and `high`: its expected value and variance there,
        by the normal distribution learnt so far (one step of EM for interval-censored data)."""
        mean, spread = self.mean, max(self.spread, 1e-6)
        alpha, beta = (low - mean) / spread, (high - mean) / spread
        mass = _normal_cdf(beta) - _normal_cdf(alpha)
        if mass < 1e-9:  # the interval is far from what was learnt: take its nearest end
            self.add(low if alpha > 0 else high)
            return
        density_low, density_high = _normal_pdf(alpha), _normal_pdf(beta)
        shift = (density_low - density_high) / mass
        tails = (alpha * density_low if math.isfinite(alpha) else 0.0) - (
            beta * density_high if math.isfinite(beta) else 0.0
        )
        variance = spread * spread * max(0.0, 1 + tails / mass - shift * shift)
        self.add(mean + spread * shift, 0.0, variance)

    @property
    def count(self) -> float:
        return self.sums[0] + self.remote[0]

    @property
    def mean(self) -> float:
        count, total = self.count, self.sums[1] + self.remote[1]
        return (self.prior_weight * self.prior_mean + total) / (self.prior_weight + count)

    @property
    def spread(self) -> float:
        count = self.count
        weight = self.prior_weight
        squares = 0.0
        if count > 0:
            total = self.sums[1] + self.remote[1]
            squares = self.sums[2] + self.remote[2] - total * total / count - (self.sums[3] + self.remote[3])
        variance = weight * self.prior_spread**2 * math.sqrt(weight / (weight + count)) + max(0.0, squares)
        return math.sqrt(variance / (weight + count))


@final
class Forecaster:
    """What one client has learnt about the server's hints and its tasks' durations, and what it plans.

    `plan()` is the policy; everything else feeds it. Times are on the client's clock, in seconds.
    `prior_median` None (the default) starts the durations from the scale-free prior (see `_durations.py`).
    """

    def __init__(self, *, prior_median: float | None = None, prior_sigma: float = 0.5) -> None:
        self._prior = prior(prior_median, prior_sigma)
        self._told_median = prior_median
        self._durations: dict[Kind, DurationModel] = {}
        self._all = DurationModel(*self._prior)
        self.eta_log_ratio = RunningMean(0.0, PRIOR_ETA_SPREAD)
        self.queue_share = RunningMean(PRIOR_QUEUE_SHARE, PRIOR_QUEUE_SPREAD)
        #: Of the first polls that saw a task running, how many read a usable hint (and the same, remote).
        self.first_reads = [0.0, 0.0]
        self.remote_first_reads = [0.0, 0.0]
        self._progress_step = 0  # gcd of every progress value seen; 0 before any
        self._eta_tasks = 0  # tasks that read an eta
        self.ended = 0

    # -- learning -------------------------------------------------------------------------------------------

    def duration_model(self, kind: Kind) -> DurationModel:
        model = self._durations.get(kind) if kind is not None else None
        # A kind's own model once it has seen a few ends of its own; until then every kind's.
        return model if model is not None and model.ended >= 8 else self._all

    def running(self, evidence: Evidence, now: float, eta: float | None, progress: float | None) -> None:
        """A poll at `now` found the task still running with these hints."""
        self._count(evidence, now - evidence.submitted_at)
        if evidence.seen_running_at is None:
            self.first_reads[0] += 1
            if (eta is not None and eta > 0) or (progress is not None and 0 < progress < 100):
                self.first_reads[1] += 1
        if evidence.first_eta is None and eta is not None and eta > 0:
            # One task in EXPLORE_EVERY is read again early whatever its eta says (see `next_poll`), and only
            # those teach how right etas are: the others are read again when their eta says they end, so
            # those whose eta says too much are read only once they ended, and learning from the tasks read
            # in time would learn that etas say too little, trust that, and read the others later still.
            evidence.explores = self._eta_tasks % EXPLORE_EVERY == 0
            self._eta_tasks += 1
        first, first_at = evidence.first_eta, evidence.first_eta_at
        if (
            eta is not None
            and first is not None
            and first_at is not None
            and evidence.explores
            and not evidence.calibrated
            and now - first_at >= _CALIBRATION_SECONDS
            and first > eta > 0
        ):
            # A task's eta counts down `factor` times too fast when it says `factor` times the truth. Both
            # readings are rounded up to whole seconds: their difference is off by up to 1 (variance 1/6).
            counted = first - eta
            self.eta_log_ratio.add(math.log((now - first_at) / counted), 1 / (6 * counted * counted))
            evidence.calibrated = True
        evidence.record(now, eta, progress)
        if progress is not None and 0 < progress < 100:
            self._progress_step = math.gcd(self._progress_step, int(progress))

    def ended_between(self, evidence: Evidence, seen_running_at: float | None, seen_ended_at: float) -> None:
        """A task ended after `seen_running_at` (None: unknown) and before `seen_ended_at`: the end is learnt
        as somewhere in between (interval-censored), not at one point."""
        lower = seen_running_at if seen_running_at is not None else evidence.submitted_at
        lower_age = lower - evidence.submitted_at
        self._count(evidence, lower_age)
        self.ended += 1
        for model in self._models(evidence.kind):
            model.ended_between(evidence.counted_to, seen_ended_at - evidence.submitted_at)
        end = (lower + seen_ended_at) / 2
        age = end - evidence.submitted_at
        # An exploring task (see `running`) that ended before its second reading teaches how right its eta
        # was by its end, as a ratio known to lie between two bounds.
        eta, eta_at = evidence.first_eta, evidence.first_eta_at
        if eta is not None and eta_at is not None and eta >= 2 and evidence.explores and not evidence.calibrated:
            evidence.calibrated = True
            said = eta - 0.5
            low = math.log((lower - eta_at) / said) if lower > eta_at else -math.inf
            self.eta_log_ratio.add_between(low, math.log(max(seen_ended_at - eta_at, 1e-3) / said))
        if seen_ended_at - lower > max(_PRECISE_END_SECONDS, _PRECISE_END_SHARE * age):
            return  # the end is too vague to say when the task's progress started
        vagueness = (seen_ended_at - lower) ** 2 / 12  # the end is somewhere between the two polls
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
    def hints_expected(self) -> bool:
        """Whether a task's first poll likely reads a hint (an eta or progress): yes until shown otherwise."""
        polls = self.first_reads[0] + self.remote_first_reads[0]
        hinted = self.first_reads[1] + self.remote_first_reads[1]
        return (hinted + 1) / (polls + 2) >= 0.5

    def kinds(self) -> dict[Kind, DurationModel]:
        """Every kind's duration model, and every kind's together under None."""
        return {None: self._all, **self._durations}

    def model_for_sharing(self, kind: Kind) -> DurationModel:
        """The model of `kind` (None: all kinds'), made if new (another client learnt of it)."""
        if kind is None:
            return self._all
        model = self._durations.get(kind)
        if model is None:
            model = self._durations[kind] = DurationModel(*self._prior)
        return model

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

    def cost_of_delay(self, cost: float, evidence: Evidence, age: float, window: tuple[float, float] | None) -> float:
        """Polls one second of delay is worth for this task: `cost` for tasks up to `DELAY_SCALE` seconds
        long, less in proportion for longer ones (their users care about delay as a share of the wait)."""
        typical = age
        if window is not None:  # the earliest end the hints allow: a wide window is no promise of a long task
            typical = max(typical, window[0] - evidence.submitted_at)
        if self._told_median is not None:
            typical = max(typical, self._told_median)
        model = self.duration_model(evidence.kind)
        if model.ended >= 8:
            typical = max(typical, model.quantile(0.5))
        return cost if typical <= DELAY_SCALE else cost * DELAY_SCALE / typical

    def first_poll(
        self,
        evidence: Evidence,
        *,
        delay_cost: float,
        min_interval: float,
        max_interval: float | None,
        jitter: float,
        random_fraction: float,
    ) -> float:
        """When to poll a task first (clock time), just submitted.

        Where first polls usually read a hint (and until shown otherwise), early, before all but
        `FIRST_READ_SHARE` of tasks would have ended: the poll that reads the hint is what places the next one
        at the finish. Without hints, when the learnt durations make it pay off, as for any later poll.
        """
        cost = self.cost_of_delay(delay_cost, evidence, 0.0, None)
        gap = self.gap_without_hints(evidence.kind, 0.0, cost, min_interval, max_interval)
        if self.hints_expected:
            gap = min(gap, self.duration_model(evidence.kind).quantile(FIRST_READ_SHARE))
        due = evidence.submitted_at + max(min_interval, gap) * (1.0 - jitter * random_fraction)
        return max(evidence.submitted_at + min_interval, due)

    def next_poll(
        self,
        evidence: Evidence,
        now: float,
        *,
        delay_cost: float,
        min_interval: float,
        max_interval: float | None,
        jitter: float,
        random_fraction: float,
    ) -> float:
        """When to poll the task next (clock time), having just seen it running at `now`.

        Never sooner than `min_interval` from now, never later than `max_interval` (None: no fixed bound;
        without a hint, never later than the task's age or `NO_HINT_LONGEST`, whichever is longer, and with
        one than `WINDOW_GROWTH` times its age or `WINDOW_LONGEST`); jitter (a
        share `jitter` of the wait, `random_fraction` in [0, 1)) only ever brings a poll earlier, and never
        before the window opens.
        """
        window = self.window(evidence)
        age = now - evidence.submitted_at
        cost = self.cost_of_delay(delay_cost, evidence, age, window)
        patience = 1.0 / cost
        if window is None or window[1] <= now:
            gap = self.gap_without_hints(evidence.kind, age, cost, min_interval, max_interval)
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
            first_at, first = evidence.first_eta_at, evidence.first_eta
            if evidence.explores and not evidence.calibrated and first_at is not None and first is not None:
                # Read again early, while all but tasks whose eta says over three times too much still run,
                # and not a jitter sooner (a reading too soon after the first would teach nothing).
                explore = max(now, first_at + max(_CALIBRATION_SECONDS, first * EXPLORE_SHARE))
                if explore < aim:
                    aim = earliest = explore
            due = aim - jitter * random_fraction * (aim - earliest)
            if max_interval is None:  # however far the hints put the end, look again within a bound
                due = min(due, now + max(WINDOW_LONGEST, WINDOW_GROWTH * age))
        due = max(now + min_interval, due)
        return due if max_interval is None else min(now + max_interval, due)

    def gap_without_hints(
        self, kind: Kind, age: float, delay_cost: float, min_interval: float, max_interval: float | None
    ) -> float:
        """The wait `g` that solves `delay_cost * g**2 * h / 2 = 1`, within the bounds, where `h` is the hazard
        averaged over the wait: a poll is worth making once the delay it saves, on average, costs as much.

        The longest wait is `max_interval` if given, else the task's age or `NO_HINT_LONGEST`, whichever is
        longer: however little is known, a task is looked at again before its age has doubled."""
        model = self.duration_model(kind)
        longest = max(NO_HINT_LONGEST, age) if max_interval is None else max_interval
        longest = max(longest, min_interval)

        def excess(gap: float) -> float:
            return delay_cost * gap * gap * model.mean_hazard(age, age + gap) / 2 - 1

        if excess(longest) <= 0:
            return longest
        if excess(min_interval) >= 0:
            return min_interval
        low, high = min_interval, longest
        for _ in range(24):
            middle = math.sqrt(low * high)
            if excess(middle) < 0:
                low = middle
            else:
                high = middle
        return low

    def webhook_fallback(self, kind: Kind, age: float, tail: float, max_wait: float) -> float:
        """Seconds from `age` until a task still running would have ended with chance `1 - tail`."""
        model = self.duration_model(kind)
        low, high = 0.0, max_wait
        if model.survival_between(age, age + high) > tail:
            return max_wait
        for _ in range(30):
            middle = (low + high) / 2
            if model.survival_between(age, age + middle) > tail:
                low = middle
            else:
                high = middle
        return high
