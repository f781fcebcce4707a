"""What the pool knows of each actor (`ActorSlot`), the nodes it gave up on, and how an actor's death reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tessera_pipeline.run.messages import WorkerSpec
from tessera_pipeline.run.policy import ClassPolicy


@dataclass
class ActorSlot:
    """One actor of the fleet and what the driver knows of it."""

    key: str
    node_id: str
    policy: ClassPolicy
    spec: WorkerSpec
    handle: Any
    ready_ref: Any
    state: str = "starting"  # starting | ready | recovering | dead
    inflight: list[Any] = field(default_factory=list)
    head_since: float = 0.0
    tiles_done: int = 0
    last_error: str = ""
    threads: int = 0
    cores: tuple[int, ...] = ()
    checkpoint_fetched_bytes: int = 0
    deaths: int = 0


@dataclass
class GivenUpNode:
    """A node the pool stopped using, and why (shown by `status` and the progress panel)."""

    node_id: str
    hw_class: str
    reason: str
    last_error: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for the progress record."""
        return {"node_id": self.node_id, "hw_class": self.hw_class, "reason": self.reason,
                "last_error": self.last_error, "at": self.at}


def death_cause(exc: BaseException) -> str:
    """One line for a dead actor: Ray's headline plus, for a failed constructor, the exception it raised."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    raised = [ln for ln in lines[1:] if not ln.startswith(("File ", "^", "~", "Traceback", "[")) and ":" in ln]
    return lines[0] if not raised else f"{lines[0]} -- {raised[-1]}"


def is_restarting(exc: BaseException) -> bool:
    """True for Ray's "temporarily unavailable" (the actor is restarting or unreachable), not a death."""
    return type(exc).__name__ == "ActorUnavailableError"
