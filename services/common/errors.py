"""Domain errors and their gRPC status, with rich details (google.rpc.Status).

The domain and service layers raise these; only the gRPC edge turns them into a
status. Anything else that escapes a handler is a bug and becomes INTERNAL, except a
lost database or broker connection, which is UNAVAILABLE so that clients retry.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "consortium.example.cn"
MAX_VIOLATIONS_SHOWN = 20


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason

    def details(self) -> list[any_pb2.Any]:
        if not self.reason:
            return []
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN)
        packed = any_pb2.Any()
        packed.Pack(info)
        return [packed]


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: list[FieldViolation] | FieldViolation, message: str = "") -> None:
        self.violations = [violations] if isinstance(violations, FieldViolation) else list(violations)
        shown = self.violations[:MAX_VIOLATIONS_SHOWN]
        summary = "; ".join(f"{v.field}: {v.description}" for v in shown)
        if len(self.violations) > len(shown):
            summary += f"; and {len(self.violations) - len(shown)} more"
        super().__init__(message or f"invalid request: {summary}"[:1000], reason="INVALID_ARGUMENT")

    def details(self) -> list[any_pb2.Any]:
        # Trailing metadata has a hard limit (16 KiB by default): a request with hundreds of
        # bad items would otherwise turn INVALID_ARGUMENT into the client's RESOURCE_EXHAUSTED.
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field[:200], description=v.description[:200])
            for v in self.violations[:MAX_VIOLATIONS_SHOWN]])
        packed = any_pb2.Any()
        packed.Pack(bad)
        return [packed]


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION

    def details(self) -> list[any_pb2.Any]:
        failure = error_details_pb2.PreconditionFailure(violations=[
            error_details_pb2.PreconditionFailure.Violation(
                type=self.reason or "STATE", subject="", description=self.message)])
        packed = any_pb2.Any()
        packed.Pack(failure)
        return [packed, *super().details()]


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(DomainError):
    """A concurrent change won; the caller may re-read and retry."""
    code = grpc.StatusCode.ABORTED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass
class Violations:
    """Collects every bad field of a request before raising once, so a caller sees all."""
    items: list[FieldViolation] = field(default_factory=list)

    def add(self, field_path: str, description: str) -> None:
        self.items.append(FieldViolation(field_path, description))

    def check(self, condition: bool, field_path: str, description: str) -> bool:
        if not condition:
            self.add(field_path, description)
        return condition

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def to_rpc_status(error: DomainError) -> status_pb2.Status:
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=error.details())


def status_code_name(code: int) -> str:
    return code_pb2.Code.Name(code)
