"""What the core needs to know about the CSE it is; filled from the config file by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    # Lifetime given to resources created without et (seconds); ACME uses five years.
    default_lifetime: float = 5 * 365 * 24 * 3600.0
    # Container limits applied when a CREATE gives none (None: unlimited).
    default_max_instances: int | None = None
    default_max_byte_size: int | None = None
    # Notification delivery
    notification_timeout: float = 5.0
    notification_retry_max: float = 60.0
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
