"""Failure classification against the exceptions a real local Ray raises, not hand-made look-alikes.

The driver calls `classify` on whatever `ray.get` raises: a dead actor, a restarting one, a crashed
worker process, a timeout, or a task whose own code raised (which Ray wraps in a RayTaskError).
Each test provokes the failure for real and checks the kind and reason a run would record.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import ray.exceptions as ray_exceptions

from tessera_pipeline.errors import CorruptFileError
from tessera_pipeline.run.failures import FailureInfo, classify

TILE = "grid_0.15_52.05"
#: What the input check of a tile raises for a truncated file, and the message the run must record for it.
PROBLEM, FILE = "truncated (read 512 of 4096 bytes)", "dpixel/2024/grid_0.15_52.05/bands.npy"
CORRUPT = f"tile {TILE}: {FILE}: {PROBLEM}"


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One local single-CPU Ray for the module; workers get this module's functions by value."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    yield
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@ray.remote(num_cpus=0)
class Tile:
    """A stand-in for the encode actor: answers pings, fails like the input check, or dies."""

    def ping(self) -> int:
        return os.getpid()

    def check_input(self) -> None:
        raise CorruptFileError(PROBLEM, tile=TILE, file=FILE)

    def call_dead_actor(self) -> None:
        dead = Tile.remote()
        ray.get(dead.ping.remote())
        ray.kill(dead, no_restart=True)
        raise calls_until_failure(dead)

    def crash(self) -> None:
        os._exit(1)


@ray.remote(max_retries=0)
def check_input_task() -> None:
    """A task whose own code raises the pipeline's typed input error."""
    raise CorruptFileError(PROBLEM, tile=TILE, file=FILE)


@ray.remote(max_retries=0)
def unexpected_task() -> None:
    """A task whose code fails in a way nobody planned for."""
    raise ValueError("unexpected")


@ray.remote(max_retries=0)
def crash_task() -> None:
    """A task whose worker process exits under it (a segfault or the OOM killer looks the same)."""
    os._exit(1)


@ray.remote(max_retries=0)
def slow_task() -> None:
    """A task that outlives the caller's patience."""
    time.sleep(30)


def failure_of(ref: Any, timeout: float = 60) -> BaseException:
    """The exception `ray.get` raises for `ref` (the test fails if it returns)."""
    with pytest.raises(Exception) as info:
        ray.get(ref, timeout=timeout)
    return info.value


def calls_until_failure(actor: Any) -> BaseException:
    """Ping an actor until a call fails (`ray.kill` is asynchronous: a call made at once may still be answered)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            ray.get(actor.ping.remote(), timeout=30)
        except Exception as exc:
            return exc
        assert time.monotonic() < deadline, "the killed actor still answers"
        time.sleep(0.05)


def test_a_killed_actor_is_a_transient_actor_loss() -> None:
    actor = Tile.remote()
    ray.get(actor.ping.remote())
    ray.kill(actor, no_restart=True)
    exc = calls_until_failure(actor)
    assert isinstance(exc, ray_exceptions.ActorDiedError), type(exc)
    assert classify(exc) == FailureInfo("transient", "actor-lost", str(exc).splitlines()[0])


def test_an_actor_that_exits_mid_call_is_a_transient_actor_loss() -> None:
    actor = Tile.remote()
    ray.get(actor.ping.remote())
    exc = failure_of(actor.crash.remote())
    assert isinstance(exc, ray_exceptions.ActorDiedError), type(exc)
    info = classify(exc)
    assert (info.kind, info.reason) == ("transient", "actor-lost")


def test_a_crashed_task_worker_is_a_transient_worker_crash() -> None:
    exc = failure_of(crash_task.remote())
    assert isinstance(exc, ray_exceptions.WorkerCrashedError), type(exc)
    info = classify(exc)
    assert (info.kind, info.reason) == ("transient", "worker-crashed")


def test_a_get_timeout_is_a_transient_timeout() -> None:
    ref = slow_task.remote()
    exc = failure_of(ref, timeout=0.5)
    ray.cancel(ref, force=True)
    assert isinstance(exc, ray_exceptions.GetTimeoutError), type(exc)
    info = classify(exc)
    assert (info.kind, info.reason) == ("transient", "timeout")


def test_a_restarting_actor_is_either_answered_or_a_transient_actor_loss() -> None:
    """Calls after `ray.kill(no_restart=False)`: on Ray 2.60 the old process may still answer the first ones,
    then they fail with ActorUnavailableError ("may or may not have been executed") until the restarted
    process answers. Every failure on the way is a retryable actor loss."""
    actor = Tile.options(max_restarts=1, max_task_retries=0).remote()
    first = ray.get(actor.ping.remote())
    ray.kill(actor, no_restart=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            if ray.get(actor.ping.remote(), timeout=30) != first:
                break  # the restarted actor serves the retry
        except ray_exceptions.RayActorError as exc:
            assert isinstance(exc, ray_exceptions.ActorUnavailableError), type(exc)
            info = classify(exc)
            assert (info.kind, info.reason) == ("transient", "actor-lost")
        assert time.monotonic() < deadline, "the actor did not come back"
        time.sleep(0.05)


#: What a task's or actor method's own code raised, as `ray.get` gives it back: (call, cause type, classification).
WRAPPED: dict[str, tuple[Any, type[BaseException], FailureInfo]] = {
    "input error in a task": (lambda: check_input_task.remote(), CorruptFileError,
                              FailureInfo("permanent", "bad-input:CorruptFileError", CORRUPT)),
    "input error in an actor method": (lambda: Tile.remote().check_input.remote(), CorruptFileError,
                                       FailureInfo("permanent", "bad-input:CorruptFileError", CORRUPT)),
    "unexpected error in a task": (lambda: unexpected_task.remote(), ValueError,
                                   FailureInfo("transient", "error:ValueError", "unexpected")),
    "actor lost inside an actor call": (lambda: Tile.remote().call_dead_actor.remote(),
                                        ray_exceptions.ActorDiedError, FailureInfo("transient", "actor-lost", "")),
}


@functools.cache
def wrapped(case: str) -> BaseException:
    """The exception `ray.get` raises for one WRAPPED case (each call is made once per module)."""
    call, _cause, _info = WRAPPED[case]
    return failure_of(call())


@pytest.mark.parametrize("case", WRAPPED)
def test_ray_wraps_what_the_code_raised_in_a_ray_task_error(case: str) -> None:
    """Ray 2.x re-raises RayTaskError(<cause>), a class made on the fly that is both; `.cause` is the original."""
    exc = wrapped(case)
    cause = WRAPPED[case][1]
    assert isinstance(exc, ray_exceptions.RayTaskError) and type(exc).__name__ == f"RayTaskError({cause.__name__})"
    assert isinstance(exc, cause) and isinstance(exc.cause, cause), type(exc).__mro__
    if cause is CorruptFileError:
        assert str(exc.cause) == CORRUPT
        assert classify(exc).kind == "permanent"  # what today's classify already gets right: not retried


@pytest.mark.parametrize("case", WRAPPED)
def test_a_wrapped_error_is_classified_as_its_cause(case: str) -> None:
    info, expected = classify(wrapped(case)), WRAPPED[case][2]
    assert (info.kind, info.reason) == (expected.kind, expected.reason)
    assert info.message == (expected.message or str(wrapped(case).cause).splitlines()[0])
