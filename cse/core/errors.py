"""One exception base carrying a response status code; the handler turns it into a response."""

from __future__ import annotations

from cse.core.types import ResponseStatusCode as RSC


class DeliveryError(Exception):
    """A target could not be reached, or did not answer in time (no response status code:
    the caller decides what that means for its request)."""


class M2MError(Exception):
    """A request failed with a oneM2M response status code and a short debug text."""

    status: RSC = RSC.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, status: RSC | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(M2MError):
    status = RSC.BAD_REQUEST


class ReleaseVersionNotSupported(M2MError):
    status = RSC.RELEASE_VERSION_NOT_SUPPORTED


class NotFound(M2MError):
    status = RSC.NOT_FOUND


class OperationNotAllowed(M2MError):
    status = RSC.OPERATION_NOT_ALLOWED


class RequestTimeout(M2MError):
    status = RSC.REQUEST_TIMEOUT


class UnsupportedMediaType(M2MError):
    status = RSC.UNSUPPORTED_MEDIA_TYPE


class SubscriptionCreatorHasNoPrivilege(M2MError):
    status = RSC.SUBSCRIPTION_CREATOR_HAS_NO_PRIVILEGE


class ContentsUnacceptable(M2MError):
    status = RSC.CONTENTS_UNACCEPTABLE


class OriginatorHasNoPrivilege(M2MError):
    status = RSC.ORIGINATOR_HAS_NO_PRIVILEGE


class Conflict(M2MError):
    status = RSC.CONFLICT


class InvalidChildResourceType(M2MError):
    status = RSC.INVALID_CHILD_RESOURCE_TYPE


class GroupMemberTypeInconsistent(M2MError):
    status = RSC.GROUP_MEMBER_TYPE_INCONSISTENT


class OriginatorAlreadyRegistered(M2MError):
    status = RSC.ORIGINATOR_HAS_ALREADY_REGISTERED


class BlockingSubscriptionAlreadyExists(M2MError):
    status = RSC.BLOCKING_SUBSCRIPTION_ALREADY_EXISTS


class OperationDeniedByRemoteEntity(M2MError):
    status = RSC.OPERATION_DENIED_BY_REMOTE_ENTITY


class NotImplementedOperation(M2MError):
    status = RSC.NOT_IMPLEMENTED


class TargetNotReachable(M2MError):
    status = RSC.TARGET_NOT_REACHABLE


class RemoteEntityNotReachable(M2MError):
    status = RSC.REMOTE_ENTITY_NOT_REACHABLE


class TargetNotSubscribable(M2MError):
    status = RSC.TARGET_NOT_SUBSCRIBABLE


class SubscriptionVerificationFailed(M2MError):
    status = RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED


class NotAcceptable(M2MError):
    status = RSC.NOT_ACCEPTABLE


class UnableToRecallRequest(M2MError):
    status = RSC.UNABLE_TO_RECALL_REQUEST


class MaxMembersExceeded(M2MError):
    status = RSC.MAX_NUMBER_OF_MEMBER_EXCEEDED
