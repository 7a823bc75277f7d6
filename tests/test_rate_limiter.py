"""The rate limiter: its requests- and tokens-per-minute windows, and a Retry-After that pauses
every caller, in every process of the run."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from crews import framework


def _limiter_in_another_process(shared, done):
    """What a `--workers` process does: its own limiter, the run's shared pause."""
    from crews.calls import RateLimiter

    RateLimiter(None, None, shared).acquire(0)
    done.value = time.monotonic()


def test_a_retry_after_in_one_process_pauses_the_others(tmp_path):
    framework.prepare(tmp_path / ".crewai")
    from crews.calls import RateLimiter

    ctx = mp.get_context("spawn")
    shared, done = ctx.Value("d", 0.0), ctx.Value("d", 0.0)
    here = RateLimiter(None, None, shared)
    here.pause(2.0)
    paused_at = time.monotonic()
    other = ctx.Process(target=_limiter_in_another_process, args=(shared, done))
    other.start()
    other.join(30)
    assert other.exitcode == 0
    assert done.value - paused_at >= 1.9  # it waited for the pause another process received


def test_without_a_shared_pause_a_limiter_pauses_only_its_own_callers(tmp_path):
    framework.prepare(tmp_path / ".crewai")
    from crews.calls import RateLimiter

    paused, free = RateLimiter(None, None), RateLimiter(None, None)
    paused.pause(5.0)
    began = time.monotonic()
    free.acquire(0)
    assert time.monotonic() - began < 1.0


def _limiter_on_another_host(ledger_path, done):
    """A worker elsewhere: its own ledger connection and limiter, the pause from the ledger."""
    from crews.calls import RateLimiter
    from crews.engine import SharedPause
    from crews.ledger import Ledger

    with Ledger(ledger_path) as ledger:
        RateLimiter(None, None, SharedPause(ledger, "gpt-4o-mini")).acquire(0)
    done.value = time.time()


def test_a_retry_after_reaches_every_worker_through_the_ledger(tmp_path):
    framework.prepare(tmp_path / ".crewai")
    from crews.calls import RateLimiter
    from crews.engine import SharedPause
    from crews.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.db")
    here = RateLimiter(None, None, SharedPause(ledger, "gpt-4o-mini"))
    here.pause(2.0)
    paused_at = time.time()
    assert ledger.model_paused_until("gpt-4o-mini") >= paused_at + 1.9
    ledger.pause_model("gpt-4o-mini", paused_at - 100)  # an older, shorter pause changes nothing
    assert ledger.model_paused_until("gpt-4o-mini") >= paused_at + 1.9
    ctx = mp.get_context("spawn")
    done = ctx.Value("d", 0.0)
    other = ctx.Process(target=_limiter_on_another_host, args=(tmp_path / "ledger.db", done))
    other.start()
    other.join(60)
    assert other.exitcode == 0
    assert done.value - paused_at >= 1.9  # it waited for the pause this worker received
    free = RateLimiter(None, None, SharedPause(ledger, "another-model"))
    started = time.monotonic()
    free.acquire(0)
    assert time.monotonic() - started < 1.0  # another model is not paused
    ledger.close()


def _fleet_worker(ledger_path, rpm, n, out):
    """A worker on another host: its own ledger connection, the fleet's window."""
    from crews.calls import RateLimiter
    from crews.engine import FleetWindow
    from crews.ledger import Ledger

    with Ledger(ledger_path) as ledger:
        limiter = RateLimiter(None, None, None, FleetWindow(ledger, "m", rpm, None, window_s=4))
        for _ in range(n):
            limiter.acquire(10)
            out.put(time.time())


@pytest.mark.slow
def test_the_fleet_stays_within_the_requests_per_minute_however_many_workers(tmp_path):
    """Two workers wanting 5 and 3 requests, a fleet limit of 6 per window (4 s here, a minute
    in a run): 6 go at once, shared as the workers need them — a per-process share (3 each)
    would idle the second's room — and the rest wait for the window."""
    framework.prepare(tmp_path / ".crewai")
    from crews.ledger import Ledger

    Ledger(tmp_path / "ledger.db").close()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_fleet_worker, args=(tmp_path / "ledger.db", 6, n, out))
             for n in (5, 3)]
    for p in procs:
        p.start()
    times = sorted(out.get(timeout=60) for _ in range(8))
    for p in procs:
        p.join(30)
    first_window = [t for t in times if t - times[0] < 3.5]
    assert len(first_window) == 6  # the fleet's six, shared as the workers needed them
    assert times[-1] - times[0] >= 3.9  # the seventh waited for the oldest to leave the window


def test_a_fleet_window_counts_tokens_too(tmp_path):
    from crews.ledger import Ledger

    with Ledger(tmp_path / "ledger.db") as ledger:
        now = time.time()
        assert ledger.take_request_slot("m", None, 100, 60, now) == 0.0
        wait = ledger.take_request_slot("m", None, 100, 60, now + 1)
        assert 58 < wait <= 59  # 120 tokens would pass 100 until the first leaves the window
        assert ledger.take_request_slot("m", None, 100, 40, now + 1) == 0.0  # 100 fit
        assert ledger.take_request_slot("m", None, 100, 60, now + 61) == 0.0  # window moved on
        assert ledger.take_request_slot("other", 1, None, 0, now) == 0.0  # per model


# --- the requests- and tokens-per-minute windows ---------------------------------------------------


class Clock:
    """The limiter's time, moved by the test: a minute's window without waiting a minute."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def blocked_acquire(limiter, tokens: int):
    """acquire() in a thread of its own; the event is set once the limiter lets it through."""
    import threading

    done = threading.Event()
    threading.Thread(target=lambda: (limiter.acquire(tokens), done.set()), daemon=True).start()
    return done


def test_requests_per_minute_hold_the_next_request_until_the_oldest_leaves_the_window(tmp_path):
    framework.prepare(tmp_path / ".crewai")
    from crews.calls import RateLimiter

    clock = Clock()
    limiter = RateLimiter(2, None, clock=clock)
    limiter.acquire(0)
    clock.now += 20
    limiter.acquire(0)  # two requests in the minute: the limit
    third = blocked_acquire(limiter, 0)
    assert not third.wait(0.5)
    clock.now += 39.9  # the first request is 59.9 s old: still in the window
    assert not third.wait(1.5)
    clock.now += 0.1  # 60 s: it leaves, the third goes
    assert third.wait(3)
    fourth = blocked_acquire(limiter, 0)  # the second and third are in the window
    assert not fourth.wait(1.5)
    clock.now += 20  # the second leaves
    assert fourth.wait(3)


def test_tokens_per_minute_count_every_request_in_the_window(tmp_path):
    framework.prepare(tmp_path / ".crewai")
    from crews.calls import RateLimiter

    clock = Clock()
    limiter = RateLimiter(None, 1000, clock=clock)
    limiter.acquire(600)
    clock.now += 10
    limiter.acquire(400)  # exactly the limit
    more = blocked_acquire(limiter, 1)
    assert not more.wait(1.5)
    clock.now += 50  # the 600 leave the window; 400 + 1 fit
    assert more.wait(3)
    assert blocked_acquire(limiter, 599).wait(3)  # 400 + 1 + 599 = 1000
    over = blocked_acquire(limiter, 1)
    assert not over.wait(1.5)
    clock.now += 10
    assert over.wait(3)


def test_one_request_larger_than_the_token_limit_goes_alone_rather_than_never(tmp_path):
    framework.prepare(tmp_path / ".crewai")
    from crews.calls import RateLimiter

    clock = Clock()
    limiter = RateLimiter(None, 1000, clock=clock)
    assert blocked_acquire(limiter, 5000).wait(3)  # an empty window lets it through
    after = blocked_acquire(limiter, 10)
    assert not after.wait(1.5)  # but nothing goes beside it for the minute
    clock.now += 60
    assert after.wait(3)


def test_a_ticket_whose_deadline_passes_while_it_waits_gives_up(tmp_path):
    framework.prepare(tmp_path / ".crewai")
    from crews.calls import RateLimiter, TicketDeadlineExceeded

    limiter = RateLimiter(1, None, clock=Clock())
    limiter.acquire(0)
    began = time.monotonic()
    with pytest.raises(TicketDeadlineExceeded, match="rate limiter"):
        limiter.acquire(0, deadline=time.monotonic() + 5)  # the next slot is a minute away
    assert time.monotonic() - began < 1.0
