"""Enumerations of the oneM2M protocol: resource types, operations, status codes, result content."""

from __future__ import annotations

from enum import IntEnum


class ResourceType(IntEnum):
    ACCESS_CONTROL_POLICY = 1
    AE = 2
    CONTAINER = 3
    CONTENT_INSTANCE = 4
    CSE_BASE = 5
    GROUP = 9
    REMOTE_CSE = 16
    SUBSCRIPTION = 23


class Operation(IntEnum):
    CREATE = 1
    RETRIEVE = 2
    UPDATE = 3
    DELETE = 4
    NOTIFY = 5
    # Not a wire value: the access-control bit checked for discovery requests.
    DISCOVER = 6


# acop bits of an access control rule, per operation.
OPERATION_BITS: dict[Operation, int] = {
    Operation.CREATE: 1,
    Operation.RETRIEVE: 2,
    Operation.UPDATE: 4,
    Operation.DELETE: 8,
    Operation.NOTIFY: 16,
    Operation.DISCOVER: 32,
}


class ResponseStatusCode(IntEnum):
    ACCEPTED = 1000
    OK = 2000
    CREATED = 2001
    DELETED = 2002
    UPDATED = 2004
    BAD_REQUEST = 4000
    RELEASE_VERSION_NOT_SUPPORTED = 4001
    NOT_FOUND = 4004
    OPERATION_NOT_ALLOWED = 4005
    REQUEST_TIMEOUT = 4008
    UNSUPPORTED_MEDIA_TYPE = 4015
    SUBSCRIPTION_CREATOR_HAS_NO_PRIVILEGE = 4101
    CONTENTS_UNACCEPTABLE = 4102
    ORIGINATOR_HAS_NO_PRIVILEGE = 4103
    CONFLICT = 4105
    ORIGINATOR_NOT_REGISTERED = 4106
    INVALID_CHILD_RESOURCE_TYPE = 4108
    NO_MEMBERS = 4109
    GROUP_MEMBER_TYPE_INCONSISTENT = 4110
    ORIGINATOR_HAS_ALREADY_REGISTERED = 4117
    INTERNAL_SERVER_ERROR = 5000
    NOT_IMPLEMENTED = 5001
    TARGET_NOT_REACHABLE = 5103
    RECEIVER_HAS_NO_PRIVILEGE = 5105
    ALREADY_EXISTS = 5106
    REMOTE_ENTITY_NOT_REACHABLE = 5107
    TARGET_NOT_SUBSCRIBABLE = 5203
    SUBSCRIPTION_VERIFICATION_INITIATION_FAILED = 5204
    SUBSCRIPTION_HOST_HAS_NO_PRIVILEGE = 5205
    NOT_ACCEPTABLE = 5207
    MAX_NUMBER_OF_MEMBER_EXCEEDED = 6010

    @property
    def is_success(self) -> bool:
        return 1000 <= self.value < 3000


class ResultContent(IntEnum):
    NOTHING = 0
    ATTRIBUTES = 1
    HIERARCHICAL_ADDRESS = 2
    HIERARCHICAL_ADDRESS_AND_ATTRIBUTES = 3
    ATTRIBUTES_AND_CHILD_RESOURCES = 4
    ATTRIBUTES_AND_CHILD_REFERENCES = 5
    CHILD_REFERENCES = 6
    ORIGINAL_RESOURCE = 7
    CHILD_RESOURCES = 8
    MODIFIED_ATTRIBUTES = 9


class ContentStatus(IntEnum):
    """cnst of a response (TS-0004 6.3.4.2.44): is the content all there is?"""

    PARTIAL_CONTENT = 1
    FULL_CONTENT = 2


class FilterUsage(IntEnum):
    DISCOVERY = 1
    CONDITIONAL_RETRIEVAL = 2


class NotificationEventType(IntEnum):
    UPDATE_OF_RESOURCE = 1
    DELETE_OF_RESOURCE = 2
    CREATE_OF_DIRECT_CHILD = 3
    DELETE_OF_DIRECT_CHILD = 4


class NotificationContentType(IntEnum):
    ALL_ATTRIBUTES = 1
    MODIFIED_ATTRIBUTES = 2
    RESOURCE_ID = 3


class PendingNotification(IntEnum):
    SEND_LATEST = 1
    SEND_ALL_PENDING = 2


class ConsistencyStrategy(IntEnum):
    ABANDON_MEMBER = 1
    ABANDON_GROUP = 2
    SET_MIXED = 3


# Release versions this CSE accepts; a request without one is Release 1.
SUPPORTED_RELEASES = frozenset({"2", "2a", "3", "4", "5"})
