"""`mosaic`'s shard loop at scale: never more shard tasks in flight than its window (a global year is 98k shards, each
task reserving 3 GiB), every shard built exactly once whatever order they finish in, and a failing shard stops the
run with its one-line error."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import pytest

from tessera_pipeline.errors import PublishError
from tessera_pipeline.publish.mosaic import ShardJob, record_key
from tessera_pipeline.publish.shard_pool import ShardResult, drive


class Recording:
    """Builds that finish out of order, a few per wait; records how many are in flight at once."""

    def __init__(self, fail: ShardJob | None = None) -> None:
        self.fail = fail
        self.in_flight: set[int] = set()
        self.most = 0
        self.submitted: list[ShardJob] = []
        self.waits = 0

    def submit(self, job: ShardJob) -> Hashable:
        """Start one build."""
        self.submitted.append(job)
        handle = len(self.submitted)
        self.in_flight.add(handle)
        self.most = max(self.most, len(self.in_flight))
        return handle

    def wait(self, handles: Sequence[Hashable], num_returns: int, timeout_s: float | None) -> list[Hashable]:
        """Every third handle given, newest first (at least one), as builds of uneven length finish."""
        self.waits += 1
        ready = list(handles)[::-1][::3][:num_returns]
        return ready or list(handles)[:1]

    def result(self, handle: Hashable, job: ShardJob) -> ShardResult:
        """The build's record and left-out tiles, or the failing shard's typed error."""
        self.in_flight.discard(handle)  # type: ignore[arg-type]
        if job == self.fail:
            raise PublishError(f"shard utm{job.zone:02d} {job.row}_{job.col} of {job.year}: OSError: disk full")
        return record_key(job), {f"grid_{job.row}": "damaged"} if job.row == 3 else {}


JOBS = [ShardJob(zone=33, year=2024, row=r, col=c, tiles=()) for r in range(40) for c in range(25)]


@pytest.mark.parametrize("window", [1, 7, 64])
def test_never_more_than_the_window_in_flight_and_each_shard_built_once(window: int) -> None:
    pool = Recording()
    built: list[str] = []
    left_out: dict[str, str] = {}

    def finished(job: ShardJob, result: ShardResult) -> None:
        built.append(result[0])
        left_out.update(result[1])

    drive(JOBS, pool, window, finished, poll_s=0.0)
    assert pool.most == window
    assert sorted(built) == sorted(record_key(j) for j in JOBS)
    assert len(pool.submitted) == len(JOBS)
    assert left_out == {"grid_3": "damaged"}
    assert pool.waits < len(JOBS) or window == 1


def test_a_failing_shard_stops_the_run_with_its_one_line_error() -> None:
    pool = Recording(fail=JOBS[123])
    with pytest.raises(PublishError, match=r"^shard utm33 4_23 of 2024: OSError: disk full$"):
        drive(JOBS, pool, 16, lambda job, result: None, poll_s=0.0)
    assert len(pool.submitted) < len(JOBS)


def test_a_window_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        drive(JOBS, Recording(), 0, lambda job, result: None)
