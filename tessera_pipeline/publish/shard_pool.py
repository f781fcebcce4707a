"""Building many shards through an executor with a bounded window: at most `window` shard tasks in flight, the
finished ones collected in batches, so the driver's cost grows with the shards, not with their square.

The executor is an object with submit / wait / result (Ray tasks in a run, anything else in a test or benchmark),
as Ray Data's operators drive their pool."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol

from tessera_pipeline.errors import PublishError, TesseraError
from tessera_pipeline.publish.mosaic import ShardJob

log = logging.getLogger(__name__)

#: What one shard build returns: its record's key and the tiles left out of it, with their cause.
ShardResult = tuple[str, dict[str, str]]
#: Seconds a wait gathers finished shards before the driver handles them (one wait per batch, not per shard).
POLL_S = 0.5
#: Shard tasks in flight per CPU of the cluster: enough queued that no CPU idles while the driver polls.
WINDOW_PER_CPU = 2


class ShardExecutor(Protocol):
    """Runs shard builds: submit one, wait for some, take one's result (raising its typed error)."""

    def submit(self, job: ShardJob) -> Hashable:
        """Start building a shard; a handle to wait on."""
        ...

    def wait(self, handles: Sequence[Hashable], num_returns: int, timeout_s: float | None) -> list[Hashable]:
        """Up to `num_returns` finished handles, waiting at most `timeout_s` (None: until that many finish)."""
        ...

    def result(self, handle: Hashable, job: ShardJob) -> ShardResult:
        """A finished build's result, or its failure as one typed error naming the shard and cause."""
        ...


def drive(jobs: Iterable[ShardJob], executor: ShardExecutor, window: int,
          on_result: Callable[[ShardJob, ShardResult], None], *, poll_s: float = POLL_S) -> None:
    """Build every job exactly once with at most `window` in flight, handing each result to `on_result` as its
    batch comes back; the first failure is raised (the shards still in flight are not waited for)."""
    if window < 1:
        raise ValueError(f"a shard window holds at least one task, got {window}")
    queue = iter(jobs)
    pending: dict[Hashable, ShardJob] = {}

    def top_up() -> None:
        """Submit queued jobs until the window is full or none are left."""
        while len(pending) < window:
            job = next(queue, None)
            if job is None:
                return
            pending[executor.submit(job)] = job

    top_up()
    while pending:
        for handle in executor.wait(list(pending), len(pending), poll_s):
            job = pending.pop(handle)
            on_result(job, executor.result(handle, job))
        top_up()


def shard_name(job: ShardJob) -> str:
    """A shard as messages name it: `shard utm33 2_5 of 2024`."""
    return f"shard utm{job.zone:02d} {job.row}_{job.col} of {job.year}"


class RayShards:
    """Shard builds as Ray tasks: `build(job, *args_of(job))` in one fresh worker process per shard."""

    def __init__(self, build: Callable[..., ShardResult], args_of: Callable[[ShardJob], tuple[Any, ...]],
                 memory: int) -> None:
        import ray

        self._task = ray.remote(max_calls=1, num_cpus=1, memory=memory)(build)
        self._args_of = args_of

    @staticmethod
    def window() -> int:
        """WINDOW_PER_CPU tasks per CPU of the cluster (at least one)."""
        import ray

        return max(1, WINDOW_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))

    def submit(self, job: ShardJob) -> Hashable:
        """Start the shard's task."""
        ref: Hashable = self._task.remote(job, *self._args_of(job))
        return ref

    def wait(self, handles: Sequence[Hashable], num_returns: int, timeout_s: float | None) -> list[Hashable]:
        """ray.wait without fetching the results to the driver."""
        import ray

        ready, _rest = ray.wait(list(handles), num_returns=num_returns, timeout=timeout_s, fetch_local=False)
        return list(ready)

    def result(self, handle: Hashable, job: ShardJob) -> ShardResult:
        """The task's result; its failure as the typed error raised inside the task (one line, naming the cause),
        not Ray's wrapper with the remote traceback."""
        import ray
        from ray.exceptions import RayError, RayTaskError

        try:
            result: ShardResult = ray.get(handle)
            return result
        except RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, TesseraError):
                raise cause from None
            raise PublishError(f"{shard_name(job)}: {type(cause).__name__}: {cause}") from None
        except RayError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise PublishError(f"{shard_name(job)}: {type(exc).__name__}: {first}") from None
