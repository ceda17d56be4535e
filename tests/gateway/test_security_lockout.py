"""Failed-auth lockout bookkeeping, on a clock the test moves: windows, expiry, bounded memory."""

from __future__ import annotations

import pytest

from gateway.call.peers import peer_address
from gateway.policy.auth.lockout import FailedAuthLockout


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_locks_after_max_failures_for_the_rest_of_the_window(clock: Clock) -> None:
    lockout = FailedAuthLockout(max_failures=3, window=60, clock=clock)
    for _ in range(2):
        lockout.record_failure("10.0.0.1")
    assert not lockout.any_locked()
    assert lockout.locked_for("10.0.0.1") == 0
    clock.now += 10
    lockout.record_failure("10.0.0.1")
    assert lockout.any_locked()
    assert lockout.locked_for("10.0.0.1") == pytest.approx(50)  # the window began at the first failure
    assert lockout.locked_for("10.0.0.2") == 0  # another address is unaffected
    clock.now += 50
    assert lockout.locked_for("10.0.0.1") == 0
    assert not lockout.any_locked()


def test_failures_in_an_old_window_do_not_count(clock: Clock) -> None:
    lockout = FailedAuthLockout(max_failures=2, window=5, clock=clock)
    lockout.record_failure("10.0.0.1")
    clock.now += 6
    lockout.record_failure("10.0.0.1")
    assert lockout.locked_for("10.0.0.1") == 0
    lockout.record_failure("10.0.0.1")
    assert lockout.locked_for("10.0.0.1") == pytest.approx(5)


def test_zero_max_failures_turns_it_off(clock: Clock) -> None:
    lockout = FailedAuthLockout(max_failures=0, window=60, clock=clock)
    for _ in range(100):
        lockout.record_failure("10.0.0.1")
    assert not lockout.any_locked()
    assert lockout.locked_for("10.0.0.1") == 0


def test_memory_is_bounded_oldest_windows_go_first(clock: Clock) -> None:
    lockout = FailedAuthLockout(max_failures=2, window=60, capacity=100, clock=clock)
    lockout.record_failure("victim")
    lockout.record_failure("victim")
    for number in range(1000):
        clock.now += 0.001
        lockout.record_failure(f"10.0.{number // 256}.{number % 256}")
    assert len(lockout._windows) <= 100
    # The oldest entry went first: the flood of new addresses pushed it out.
    assert lockout.locked_for("victim") == 0
    assert lockout.locked_for("10.0.3.231") == 0  # one failure each: none locked


def test_expired_windows_are_dropped_as_new_ones_come(clock: Clock) -> None:
    lockout = FailedAuthLockout(max_failures=5, window=1, clock=clock)
    for number in range(50):
        lockout.record_failure(f"10.0.0.{number}")
    clock.now += 2
    lockout.record_failure("10.0.1.1")
    assert list(lockout._windows) == ["10.0.1.1"]


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.2:40000", "127.0.0.2"),
        ("ipv6:[::1]:40000", "::/64"),
        ("ipv6:%5B::1%5D:40000", "::/64"),
        ("ipv6:[2001:db8:1:2:aaaa::1]:40000", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:2:bbbb::7]:1", "2001:db8:1:2::/64"),
        ("unix:/run/gateway.sock", "unix:/run/gateway.sock"),
    ],
)
def test_peer_address(peer: str, address: str) -> None:
    assert peer_address(peer) == address
