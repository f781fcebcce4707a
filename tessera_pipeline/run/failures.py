"""Which failures are worth retrying: a typed reason for every exception a tile can end with.

Permanent: the tile's input is bad, or the checkpoint is; retrying gives the same answer, so the
tile is recorded once and the run goes on. Transient: anything the cloud does (a lost actor or
node, S3 throttling or 5xx, a dropped connection, a timeout, an object-store hiccup); retried with
backoff up to `max_attempts`, elsewhere when possible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tessera_pipeline.errors import (
    CheckpointError,
    CommitConflictError,
    EncodeError,
    FencedError,
    InputError,
    RemoteInputError,
    StoreConflictError,
    StoreError,
)

Kind = Literal["permanent", "transient"]
#: The reason of a tile lost with its spot node (Ray's `ActorDiedError.preempted`): retried, never charged.
PREEMPTED = "preempted"
#: The reason of a commit the store refused under a newer lease generation (or a lapsed lease): never charged;
#: the driver checks whether it still holds the store.
FENCED = "fenced"


@dataclass(frozen=True)
class FailureInfo:
    """A classified failure: kind, a short reason (the failures-by-reason key) and the message."""

    kind: Kind
    reason: str
    message: str


def unwrap_task_error(exc: BaseException) -> BaseException:
    """The error a Ray task or actor method raised itself, out of Ray's RayTaskError wrapper(s)."""
    while any(c.__name__ == "RayTaskError" for c in type(exc).__mro__):
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException) or cause is exc:
            break
        exc = cause
    return exc


def classify(exc: BaseException) -> FailureInfo:
    """Classify an exception raised while processing a tile (in the worker, or by Ray around it)."""
    exc = unwrap_task_error(exc)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, RemoteInputError):
        return FailureInfo("transient", "input-unreachable", message)
    if isinstance(exc, InputError):
        return FailureInfo("permanent", f"bad-input:{type(exc).__name__}", message)
    if isinstance(exc, CheckpointError):
        return FailureInfo("permanent", "bad-checkpoint", message)
    if isinstance(exc, FencedError):
        return FailureInfo("transient", FENCED, message)
    if isinstance(exc, CommitConflictError):
        return FailureInfo("transient", "commit-conflict", message)
    if isinstance(exc, StoreConflictError):
        return FailureInfo("permanent", "store-conflict", message)
    if isinstance(exc, StoreError):
        return FailureInfo("transient", "io-error", message)
    if isinstance(exc, EncodeError):
        return FailureInfo("permanent", "encode-error", message)
    return classify_system(exc, message)


def classify_system(exc: BaseException, message: str) -> FailureInfo:
    """Ray, network and storage failures: all transient, with a reason naming what happened."""
    name = type(exc).__name__
    if getattr(exc, "preempted", False) is True:
        return FailureInfo("transient", PREEMPTED, message)
    if name in ("ActorDiedError", "RayActorError", "ActorUnavailableError", "ActorUnschedulableError"):
        return FailureInfo("transient", "actor-lost", message)
    if name in ("NodeDiedError", "OwnerDiedError", "ObjectLostError", "ObjectFetchTimedOutError",
                "ReferenceCountingAssertionError", "ObjectReconstructionFailedError"):
        return FailureInfo("transient", "object-lost", message)
    if name in ("WorkerCrashedError", "OutOfMemoryError", "LocalRayletDiedError", "RaySystemError"):
        return FailureInfo("transient", "worker-crashed", message)
    if name in ("GetTimeoutError", "TimeoutError", "ReadTimeoutError", "ConnectTimeoutError"):
        return FailureInfo("transient", "timeout", message)
    if isinstance(exc, (OSError, ConnectionError)) or name in ("ClientError", "EndpointConnectionError",
                                                               "BotoCoreError", "StoreError"):
        return FailureInfo("transient", "io-error", message)
    return FailureInfo("transient", f"error:{name}", message)
