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
    MGMT_OBJ = 13
    NODE = 14
    POLLING_CHANNEL = 15
    REMOTE_CSE = 16
    REQUEST = 17
    SUBSCRIPTION = 23
    FLEX_CONTAINER = 28
    TIME_SERIES = 29
    TIME_SERIES_INSTANCE = 30


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
    ACCEPTED_NON_BLOCKING_REQUEST_SYNCH = 1001
    ACCEPTED_NON_BLOCKING_REQUEST_ASYNCH = 1002
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
    # Never sent by this CSE (an unknown originator gets 4103, as from ACME); other CSEs
    # (tinyIoT, older ones) still answer it to an AE they do not know.
    ORIGINATOR_NOT_REGISTERED = 4106
    INVALID_CHILD_RESOURCE_TYPE = 4108
    NO_MEMBERS = 4109
    GROUP_MEMBER_TYPE_INCONSISTENT = 4110
    ORIGINATOR_HAS_ALREADY_REGISTERED = 4117
    BLOCKING_SUBSCRIPTION_ALREADY_EXISTS = 4124
    OPERATION_DENIED_BY_REMOTE_ENTITY = 4127
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
    UNABLE_TO_RECALL_REQUEST = 5220
    MAX_NUMBER_OF_MEMBER_EXCEEDED = 6010

    @property
    def is_success(self) -> bool:
        return 1000 <= self.value < 3000


class ResponseType(IntEnum):
    """rt (rtv) of a request: how the originator wants its answer (TS-0004 m2m:responseType)."""

    NON_BLOCKING_REQUEST_SYNCH = 1
    NON_BLOCKING_REQUEST_ASYNCH = 2
    BLOCKING_REQUEST = 3
    FLEX_BLOCKING = 4
    NO_RESPONSE = 5


class RequestStatus(IntEnum):
    """rs of a <request> resource (TS-0004 m2m:requestStatus)."""

    COMPLETED = 1
    FAILED = 2
    PENDING = 3
    FORWARDED = 4
    PARTIALLY_COMPLETED = 5


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
    BLOCKING_UPDATE = 7
    # A <timeSeries> found data points missing (TS-0001 9.6.36, enc.md in TS-0004 6.3.5.x).
    REPORT_ON_GENERATED_MISSING_DATA_POINTS = 8


class NotificationContentType(IntEnum):
    ALL_ATTRIBUTES = 1
    MODIFIED_ATTRIBUTES = 2
    RESOURCE_ID = 3
    TIME_SERIES_NOTIFICATION = 5  # m2m:tsn, the content of event type 8


class PendingNotification(IntEnum):
    SEND_LATEST = 1
    SEND_ALL_PENDING = 2


class ConsistencyStrategy(IntEnum):
    ABANDON_MEMBER = 1
    ABANDON_GROUP = 2
    SET_MIXED = 3


# Release versions this CSE accepts; a request without one is Release 1.
SUPPORTED_RELEASES = frozenset({"2", "2a", "3", "4", "5"})
