"""What the store's failures mean to a runtime: CNIErrors with the code a CNI verb reports.

| failure                                                   | class            | code |
|-----------------------------------------------------------|------------------|------|
| no endpoint answered in time, no leader, no quorum        | StoreUnavailable | 11   |
| TLS: server not trusted, our client certificate refused;  | StoreRejected    | 7    |
| not an etcd v3 gateway; access denied                     |                  |      |
| etcd refused the request itself (lease not found, ...)    | StoreFailed      | 999  |
"""

from __future__ import annotations

from cni_yogurt.cni.errors import CNIError, Code


class StoreError(CNIError):
    """A failure talking to the cluster store."""


class StoreUnavailable(StoreError):
    """No member could serve the request within the deadline: retry later (a runtime does)."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(Code.TRY_AGAIN_LATER, msg, details)


class StoreRejected(StoreError):
    """The store is there but refuses us: a configuration problem that retrying does not fix."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(Code.INVALID_CONFIG, msg, details)


class StoreFailed(StoreError):
    """etcd answered with an error for this request (grpc_code is etcd's gRPC status code)."""

    def __init__(self, msg: str, details: str = "", grpc_code: int = 0) -> None:
        super().__init__(Code.INTERNAL, msg, details)
        self.grpc_code = grpc_code


# gRPC status codes etcd uses that mean "this member cannot serve it now; another may".
GRPC_UNAVAILABLE = 14
GRPC_DEADLINE_EXCEEDED = 4
GRPC_NOT_FOUND = 5
GRPC_OUT_OF_RANGE = 11  # a revision compacted away
GRPC_PERMISSION_DENIED = 7
GRPC_UNAUTHENTICATED = 16
RETRYABLE = frozenset({GRPC_UNAVAILABLE, GRPC_DEADLINE_EXCEEDED})
