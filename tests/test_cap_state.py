"""CapState and its Lua port (the Redis step) keep one set of rules.

The same random sequences of operations go to a `CapState` and, on a real redis-server, to the step itself
(`_redis_script.STEP`, called directly with the same times through its `now` input); every field of the
state is compared after each operation. Several clients share the Redis state, as `RedisBudget`s do: one
may leave (a live one adopts its tasks and holds its unanswered slots), and Redis may lose everything (each
client restores its slots). Times are quarter seconds: exact in both languages (Lua keeps 14 digits).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import redis
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from pixverse_async._cap_state import CAP_EVIDENCE, CAP_STRIKES, LOST_ANSWER_HOLD, CapState, Refusal
from pixverse_async._redis_script import STEP, STEP_INPUTS, STEP_OPS, STEP_REPLY
from pixverse_async.testing import RedisServer

KEYS = [f"parity:{part}" for part in ("state", "owners", "tasks", "since", "leases", "held", "changed")]
LEASE = 1e6  # leases lapse only when a client leaves
FIELDS = ("in_use", "running", "proven", "window", "cap", "floor", "strikes", "ends", "step", "longest")
# Out of 100, so that slots fill up and caps are learnt and probed: most operations take, accept, refuse or
# release a slot; a client leaves or Redis loses its state now and then.
WEIGHTS = {"take": 20, "accept": 24, "refuse": 20, "release": 18, "adopt": 4, "abandon": 5, "wait": 6, "leave": 2}
WEIGHTS["lose"] = 100 - sum(WEIGHTS.values())
KINDS = tuple(kind for kind, weight in WEIGHTS.items() for _ in range(weight))
WAITS = (0.25, 1.0, 2.5, 10.0, LOST_ANSWER_HOLD)
RETRY_AFTERS = (None, 0.0, 2.5)


@attrs.define
class _Slot:
    owner: str
    running: bool = False
    accepted_at: float | None = None  # for `took`: set by an acceptance only, as `Slot.accepted_at`
    since: float | None = None  # when it began to stand for its task (Redis's `since`)


@attrs.define
class Parity:
    """One sequence applied to both: the model as `LocalBudget` would, the step as `RedisBudget`s would."""

    store: redis.Redis
    script: Any
    model: CapState
    now: float = 1000.0
    clients: list[str] = attrs.field(factory=lambda: ["c0", "c1"])
    epochs: dict[str, str] = attrs.field(factory=dict)
    slots: dict[str, _Slot] = attrs.field(factory=dict)
    joined: int = 2
    limit: int = 0  # as the last step answered

    def step(
        self, client: str, ops: tuple[dict[str, Any], ...] = (), *, want: int = 0, **flags: bool
    ) -> dict[str, Any]:
        inputs: dict[str, Any] = {
            "client": client,
            "epoch": self.epochs.get(client, ""),
            "lease": LEASE,
            "max_concurrency": self.model.max_concurrency,
            "want": want,
            "fallback_hold": LOST_ANSWER_HOLD,
            "grace": 0.0,
            "leaving": flags.get("leaving", False),
            "restoring": flags.get("restoring", False),
            "cap_evidence": CAP_EVIDENCE,
            "cap_strikes": CAP_STRIKES,
            "now": self.now,
            "ops": list(ops),
        }
        if self.model.given_cap is not None:
            inputs["given_cap"] = self.model.given_cap
        assert inputs.keys() <= STEP_INPUTS.keys() and {op["op"] for op in ops} <= STEP_OPS.keys()
        reply: dict[str, Any] = json.loads(self.script(keys=KEYS, args=[json.dumps(inputs)]))
        assert reply.keys() <= STEP_REPLY.keys()
        self.epochs[client] = reply["epoch"]
        assert reply["status"] in ("ok", "restore"), reply
        self.limit = reply["limit"]
        return reply

    def report(self, name: str, token: str, **fields: object) -> None:
        """One slot's report, in a step of its own (the model frees what is due after it, as a step does)."""
        self.step(self.slots[token].owner, ({"op": name, "slot": token, **fields},))
        self.model.free_due(self.now)

    def apply(self, kind: str, pick: int, value: int) -> None:
        model, now = self.model, self.now
        taken = sorted(token for token, slot in self.slots.items() if not slot.running)
        live = sorted(self.slots)
        if kind == "take":
            client = self.clients[pick % len(self.clients)]
            want = 1 + value % 4
            model.free_due(now)
            expected = sum(model.take() for _ in range(want))
            granted = list(self.step(client, want=want)["granted"])
            assert len(granted) == expected
            self.slots.update((token, _Slot(client)) for token in granted)
        elif kind in ("accept", "adopt") and taken:
            token = taken[pick % len(taken)]
            slot = self.slots[token]
            slot.running, slot.since = True, now
            if kind == "accept":
                slot.accepted_at = now
                model.accepted()
            else:
                model.adopted()
            self.report(f"{kind}ed", token, task=f"task-{token}")
        elif kind == "refuse":  # up to four in a row, as a cap's 429s come
            retry_after = RETRY_AFTERS[value % len(RETRY_AFTERS)]
            for token in taken[: 1 + value // 3 % 4]:
                refusal = model.refused(retry_after)
                assert (refusal is Refusal.TRANSIENT) == (retry_after == 0.0)
                self.report("refused", token, retry_after=retry_after)
                del self.slots[token]
        elif kind == "release" and live:
            token = live[pick % len(live)]
            slot = self.slots[token]
            took = None if slot.accepted_at is None else now - slot.accepted_at
            model.released(running=slot.running, took=took)
            self.report("released", token, took=took)
            del self.slots[token]
        elif kind == "abandon" and live:
            token = live[pick % len(live)]
            slot = self.slots[token]
            model.abandoned(slot.since if slot.since is not None else now, running=slot.running)
            self.report("abandoned", token)
            del self.slots[token]
        elif kind == "wait":
            self.now += WAITS[value % len(WAITS)]
        elif kind == "leave":
            self.leave(self.clients[pick % len(self.clients)])
        elif kind == "lose":
            self.lose()

    def leave(self, leaver: str) -> None:
        """The client closes; a new one joins, and its first step adopts the leaver's tasks."""
        self.clients.remove(leaver)
        heir = f"c{self.joined}"
        self.joined += 1
        self.clients.append(heir)
        self.step(leaver, leaving=True)
        self.model.free_due(self.now)
        self.step(heir)
        self.model.free_due(self.now)
        for token in sorted(token for token, slot in self.slots.items() if slot.owner == leaver):
            slot = self.slots[token]
            if slot.running:  # adopted by the heir: an `adopted_slot`, with no acceptance of its own
                slot.owner, slot.accepted_at = heir, None
            else:  # an answer the leaver never heard: held from now
                self.model.abandoned(self.now, running=False)
                del self.slots[token]

    def lose(self) -> None:
        """Redis loses its state: each client hears so, then restores the slots it holds."""
        self.store.delete(*KEYS)
        model = self.model
        self.model = CapState(model.max_concurrency, model.given_cap)
        for client in self.clients:
            if client in self.epochs:
                assert self.step(client)["status"] == "restore"
            self.model.free_due(self.now)
            mine = sorted(token for token, slot in self.slots.items() if slot.owner == client)
            ops = []
            for token in mine:
                slot = self.slots[token]
                ops.append({"op": "restored", "slot": token, "task": f"task-{token}" if slot.running else ""})
                self.model.restored(running=slot.running)
                if slot.running:
                    slot.since = self.now
            self.step(client, tuple(ops), restoring=True)
            self.model.free_due(self.now)

    def redis_fields(self) -> dict[str, object]:
        state = self.store.hgetall(KEYS[0])
        fields: dict[str, object] = {name: float(state[name]) if state[name] else None for name in FIELDS}
        held: list[tuple[str, float]] = self.store.zrange(KEYS[5], 0, -1, withscores=True)  # type: ignore[assignment]
        fields["held"] = sorted(score for _, score in held)
        fields["limit"] = self.limit
        return fields

    def model_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {name: getattr(self.model, name) for name in FIELDS}
        fields["held"] = sorted(self.model.held)
        fields["limit"] = self.model.limit
        return fields


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def operations(rng: random.Random, count: int) -> list[tuple[str, int, int]]:
    # Drawn from a Random that Hypothesis seeds (and shrinks): its own integers lean to small values, which
    # here would be one refusal at a time, never the three in a row that teach a cap.
    return [(KINDS[rng.randrange(100)], rng.randrange(101), rng.randrange(101)) for _ in range(count)]


def test_the_redis_step_applies_the_rules_of_cap_state(store: redis.Redis) -> None:
    script = store.register_script(STEP)

    # The redis-server is started once for all examples (a function-scoped fixture would be once per test).
    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        max_concurrency=st.integers(1, 10),
        given_cap=st.none() | st.integers(1, 12),
        rng=st.randoms(use_true_random=False),
        count=st.integers(1, 120),
    )
    def check(max_concurrency: int, given_cap: int | None, rng: random.Random, count: int) -> None:
        store.flushdb()
        parity = Parity(store, script, CapState(max_concurrency, given_cap))
        for client in parity.clients:
            parity.step(client)
        sequence = operations(rng, count)
        note(f"operations: {sequence}")
        for number, (kind, pick, value) in enumerate(sequence):
            parity.apply(kind, pick, value)
            if kind != "wait":
                assert parity.redis_fields() == parity.model_fields(), f"after operation {number}: {kind}"

    check()


def test_a_slot_taken_after_redis_lost_its_state_is_never_named_as_a_restored_one(store: redis.Redis) -> None:
    # The parity test's first find: names restarted with the state, so a new slot could be given the name of
    # a live one its client had just restored (two slots, one entry in Redis: one slot leaked for good).
    parity = Parity(store, store.register_script(STEP), CapState(4, given_cap=4))
    for client in parity.clients:
        parity.step(client)
    parity.apply("take", 0, 0)
    parity.apply("accept", 0, 0)
    restored = set(parity.slots)
    parity.apply("lose", 0, 0)
    parity.apply("take", 0, 1)
    assert len(parity.slots) == 3 and restored < set(parity.slots)
    assert parity.redis_fields() == parity.model_fields()
