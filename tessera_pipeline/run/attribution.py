"""Charging each failure to its cause, on evidence, never on a streak.

Every failure costs its tile an attempt unless evidence says otherwise:
- an actor is at fault when `quarantine_after` distinct tiles that failed on it succeeded elsewhere: it is
  quarantined and the attempts those failures cost are refunded (`ActorEvidence`);
- an outage is declared only when a probe of the store or inputs from the driver fails (`OutagePolicy`):
  the run pauses and the attempts charged since the last good probe are refunded; a tile that used up its
  attempts meanwhile waits for the probe's verdict before it is failed for good;
- a tile that kills its worker process is suspected, not charged, while other tiles were in flight with
  it; suspects then run alone on an actor, and once a tile has killed two distinct worker processes (the
  last one alone) it is charged for each kill (`TileEvidence.killed_on`).
A poison tile is therefore failed for good after `max_attempts`, its neighbours are never charged for it,
and healthy actors are never quarantined because of it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from tessera_pipeline.run.probe import ProbeResult

#: Failure reasons that mean the actor's process died under the tile (not a preempted node).
DEATHS = frozenset({"actor-lost", "worker-crashed"})
#: The reason a tile is failed for good with once it killed its workers `max_attempts` times.
WORKER_KILLED = "worker-killed"


@dataclass
class TileEvidence:
    """What is known of one tile's failures: actors it failed on (attempts charged there), worker processes
    that died with it in flight, and whether it must run alone until it proves innocent."""

    charged_on: dict[str, int] = field(default_factory=dict)
    killed_on: set[str] = field(default_factory=set)
    suspect: bool = False


class Attribution:
    """The evidence of one run: per tile and per actor, and the verdicts drawn from it."""

    def __init__(self, quarantine_after: int) -> None:
        self.quarantine_after = quarantine_after
        self.tiles: dict[int, TileEvidence] = {}
        self.blamed: dict[str, set[int]] = defaultdict(set)

    def failed(self, index: int, actor: str) -> None:
        """Tile `index` failed on `actor` and was charged an attempt for it."""
        ev = self.tiles.setdefault(index, TileEvidence())
        ev.charged_on[actor] = ev.charged_on.get(actor, 0) + 1

    def succeeded(self, index: int, actor: str) -> list[str]:
        """Tile `index` committed on `actor`: every other actor it failed on gains evidence against it.
        Returns the actors now at fault (never `actor` itself)."""
        ev = self.tiles.pop(index, None)
        if ev is None:
            return []
        guilty = []
        for other in ev.charged_on:
            if other == actor:
                continue
            self.blamed[other].add(index)
            if len(self.blamed[other]) == self.quarantine_after:
                guilty.append(other)
        return guilty

    def refunds(self, actor: str) -> dict[int, int]:
        """Attempts to give back to the tiles still open whose failures on `actor` were its fault."""
        out: dict[int, int] = {}
        for index, ev in self.tiles.items():
            charged = ev.charged_on.pop(actor, 0)
            if charged:
                out[index] = charged
        return out

    def refund_all(self, index: int) -> None:
        """Forget the charges of a tile whose failures an outage caused."""
        ev = self.tiles.get(index)
        if ev is not None:
            ev.charged_on.clear()

    def died(self, index: int, worker: str, *, alone: bool) -> int:
        """Tile `index` was in flight on `worker` (an actor process) when it died; returns the kills to
        charge: every kill once the tile killed two distinct workers with the last one alone, else 0."""
        ev = self.tiles.setdefault(index, TileEvidence())
        ev.killed_on.add(worker)
        ev.suspect = True
        return len(ev.killed_on) if alone and len(ev.killed_on) >= 2 else 0

    def is_suspect(self, index: int) -> bool:
        """True for a tile that was in flight when a worker died: it runs alone until it commits."""
        ev = self.tiles.get(index)
        return ev is not None and ev.suspect

    def forget(self, index: int) -> None:
        """Drop the evidence of a tile failed for good."""
        self.tiles.pop(index, None)


@dataclass
class OutagePolicy:
    """Pause the run only on a failed probe; refund what the outage cost; judge held tiles on the next probe.

    `window`: tiles charged since the last good probe (refunded if a probe fails). `held`: tiles that used up
    their attempts with a probe pending, waiting for its verdict.
    """

    pause_first_s: float = 5.0
    pause_max_s: float = 300.0
    window: list[tuple[float, int]] = field(default_factory=list)
    held: dict[int, float] = field(default_factory=dict)
    pause_until: float = 0.0
    pauses: int = 0
    reason: str = ""
    judged_at: float = -1.0

    @property
    def paused(self) -> bool:
        """True while the last probe failed and no later one succeeded."""
        return self.pauses > 0

    def charged(self, index: int, at: float) -> None:
        """An attempt was charged at `at` (monotonic) that an outage would refund."""
        self.window.append((at, index))

    def next_pause(self, now: float) -> float:
        """Start (or extend) a pause after a failed probe; returns its length."""
        pause = min(self.pause_max_s, self.pause_first_s * 2 ** self.pauses)
        self.pauses += 1
        self.pause_until = now + pause
        return pause

    def judge(self, result: ProbeResult, now: float) -> OutageVerdict | None:
        """What a new probe result means (None when it was judged already): a good one ends any pause and fails
        for good the tiles held since before it was asked; a failed one pauses the run, refunds the window and
        sends the held tiles back to the queue."""
        if result.asked_at <= self.judged_at:
            return None
        self.judged_at = result.asked_at
        if result.ok:
            resumed = self.paused
            self.pauses = 0
            self.window = [(t, i) for t, i in self.window if t > result.asked_at]
            final = [i for i, at in self.held.items() if at <= result.asked_at]
            for index in final:
                del self.held[index]
            return OutageVerdict(resumed=resumed, fail=final)
        self.reason = result.message
        pause = self.next_pause(now)
        refund = [i for _t, i in self.window]
        requeue = list(self.held)
        self.window.clear()
        self.held.clear()
        return OutageVerdict(pause_s=pause, refund=refund, requeue=requeue)


@dataclass(frozen=True)
class OutageVerdict:
    """What one probe result asks of the scheduler: resume, fail tiles for good, or pause, refund and requeue."""

    resumed: bool = False
    fail: list[int] = field(default_factory=list)
    pause_s: float = 0.0
    refund: list[int] = field(default_factory=list)
    requeue: list[int] = field(default_factory=list)
