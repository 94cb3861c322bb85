"""What the core needs to know about the CSE it is; filled from the config file by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field

from cse.core.egress import EgressSettings


@dataclass(frozen=True, slots=True)
class CSELimits:
    """What one client may take of this CSE: storage, names, registrations, request rate.

    Every limit spares privileged originators (the admin, this CSE, the trusted ones) and
    registered CSEs. None switches a limit off. The defaults suit a head-end; a gateway
    sets tighter container defaults (gateway/config.py).
    """

    # Resource names (rn, and AE-IDs/CSE-IDs that become names): ACME sets no length limit; 64
    # is four times the longest name this system generates and keeps every path of the
    # 16-level tree below ~1 KB.
    max_name_length: int = 64
    max_nesting_depth: int = 16  # levels below the CSEBase (an AE is level 1)
    # Resources other than contentInstances below one AE (its containers, subscriptions,
    # groups, policies); contentInstances are bounded per container instead.
    max_resources_per_ae: int | None = 1000
    max_aes: int | None = None  # AEs registered with this CSE
    # mni / mbs given to a container created without them, and the most a creator may ask.
    default_max_instances: int | None = None
    default_max_byte_size: int | None = None
    max_instances_cap: int | None = None
    max_byte_size_cap: int | None = None
    max_subscriptions_per_resource: int | None = 16
    # accessControlPolicies under the CSEBase, which any registered entity may create there
    # (as on ACME) and which outlive the AE that made them.
    max_policies_under_cse_base: int | None = 1000
    # Groups one access decision may read to resolve an acor that names groups (nested
    # ones included): what a policy can make one check cost, cycles included.
    max_group_reads_per_check: int = 16
    # New AE registrations (one that finds its AE already there costs nothing), as token
    # buckets: per CSE, refilled at `registrations_per_minute` and holding
    # `registration_burst`; per source address (Request.source), holding one minute's worth.
    # Loopback sources are not limited per source: a local process (a reverse proxy, the fleet
    # emulator) speaks for many clients, none of them on the meter LAN.
    registrations_per_minute: int | None = 600
    registration_burst: int = 500
    registrations_per_minute_per_source: int | None = 20
    # Requests per AE originator: a token bucket refilled at this rate, holding `burst`. Wide
    # enough for any tool or application; a gateway narrows it to what a meter needs.
    requests_per_second: float | None = 100.0
    request_burst: int = 1000
    # Discovery answers at most this many results; more are signalled with cnst/cnot.
    discovery_result_cap: int = 1000
    # Polling channels (cse/core/polling.py): requests waiting in one channel for its owner
    # to take and answer them, and in all channels; polls waiting at once on one channel, and
    # on all. Anyone who may notify an AE fills its channel; its owner fills the polls.
    max_channel_requests: int | None = 64
    max_channel_requests_total: int | None = 10_000
    max_polls_per_channel: int | None = 4
    max_polls_total: int | None = 1000
    # Non-blocking requests (cse/core/nonblocking.py): operations running in the background
    # for one originator and for all, and <request> resources kept (each lives
    # `request_lifetime`, or until its rqet).
    max_pending_requests_per_originator: int | None = 8
    max_pending_requests: int | None = 256
    max_request_resources: int | None = 10_000


@dataclass(frozen=True, slots=True)
class CSESettings:
    cse_id: str = "/id-in"  # SP-relative CSE-ID
    cse_name: str = "cse-in"  # CSEBase resource name
    role: str = "in"  # "in" or "mn"
    admin_originator: str = "CAdmin"
    # Originators (exact, or a CSE-ID that covers everything below it, e.g. "/id-in") that pass
    # every access check, like the admin: a gateway trusts its head-end's applications.
    trusted_originators: tuple[str, ...] = ()
    sp_id: str | None = None  # e.g. "gridm2m.example.net"; None accepts any domain
    points_of_access: tuple[str, ...] = ()
    # Where the CSE may send beyond the registered entities (cse/core/egress.py), and which
    # other CSE-IDs may register here as a remoteCSE besides the provisioned ones.
    egress: EgressSettings = field(default_factory=EgressSettings)
    remote_cses: tuple[str, ...] = ()
    # Lifetime given to resources created without et (seconds); ACME uses five years.
    default_lifetime: float = 5 * 365 * 24 * 3600.0
    # Quotas and rate limits (docs/gateway.md, "Limits").
    limits: CSELimits = field(default_factory=CSELimits)
    # Notification delivery
    notification_timeout: float = 5.0
    notification_retry_max: float = 60.0
    # How long a RETRIEVE of a pollingChannel's pcu waits for a request when it has no rqet,
    # and the longest it waits whatever its rqet (seconds); ACME waits 10 s without rqet.
    polling_timeout: float = 10.0
    max_polling_timeout: float = 120.0
    # Lifetime of a <request> resource (non-blocking request) made without rqet, and the
    # longest one made with it (seconds); ACME keeps one 60 s.
    request_lifetime: float = 60.0
    max_request_lifetime: float = 24 * 3600.0
    # bn/dur given to a batchNotify that names none (seconds; ACME's default too).
    batch_notify_duration: float = 60.0
    expiry_check_interval: float = 1.0
    # How long a CREATE's originator + request ID is remembered against redelivery (seconds).
    request_log_retention: float = 24 * 3600.0
    supported_serializations: tuple[str, ...] = ("json", "cbor")
    release_versions: frozenset[str] = field(
        default_factory=lambda: frozenset({"2", "2a", "3", "4", "5"})
    )

    @property
    def cse_ri(self) -> str:
        return self.cse_id.lstrip("/")

    @property
    def cse_type(self) -> int:
        return {"in": 1, "mn": 2, "asn": 3}[self.role]
