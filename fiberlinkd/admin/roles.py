"""Who is calling, and what they may do.

The caller's uid comes from the socket (``SO_PEERCRED``), never from the message.

- uid 0 (root) and the daemon's own uid are ``SUPER_ADMIN``: they could read the database
  file anyway.
- Anyone else needs a row in ``admin_grants``: ``SUPER_ADMIN`` (everything), or
  ``COMMUNITY_ADMIN`` for one app per row (sees and changes only those apps).
- A uid without any grant is refused; the refusal names the grant to ask for.

Permission errors are :class:`~fiberlinkd.admin.protocol.AdminError` with code
``forbidden`` and a message an operator can act on.
"""

from __future__ import annotations

import enum
import pwd
import sqlite3
from collections.abc import Collection

import attrs

from fiberlinkd.admin.protocol import FORBIDDEN, AdminError
from fiberlinkd.ledger.admin import COMMUNITY_ADMIN, SUPER_ADMIN, grants_for_uid


class Role(enum.StrEnum):
    SUPER_ADMIN = SUPER_ADMIN
    COMMUNITY_ADMIN = COMMUNITY_ADMIN


def user_name(uid: int) -> str | None:
    """The login name of ``uid``, or ``None`` when it has no passwd entry."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def resolve_user(text: str) -> tuple[int, str | None]:
    """A login name or a numeric uid → ``(uid, name or None)``.

    A number is taken as a uid even without a passwd entry (containers, LDAP outages).
    Errors: ``LookupError`` naming the unknown user.
    """
    text = text.strip()
    if text.isdigit():
        uid = int(text)
        return uid, user_name(uid)
    try:
        entry = pwd.getpwnam(text)
    except KeyError:
        raise LookupError(f"no such user: {text!r} (give a login name or a numeric uid)") from None
    return entry.pw_uid, entry.pw_name


@attrs.frozen
class Caller:
    """The identity behind one connection, resolved for one request."""

    uid: int
    name: str | None
    role: Role | None  # None: no grant at all
    app_ids: frozenset[str]  # COMMUNITY_ADMIN apps; ignored for SUPER_ADMIN
    source: str  # "root", "daemon uid", "grant", "none"

    @property
    def is_super(self) -> bool:
        return self.role is Role.SUPER_ADMIN

    @property
    def label(self) -> str:
        """``uid 1001 (alice)``: how messages and the audit log name the caller."""
        return f"uid {self.uid} ({self.name})" if self.name else f"uid {self.uid}"

    @property
    def user_arg(self) -> str:
        """The USER argument an operator would type for this caller."""
        return self.name or str(self.uid)

    @property
    def visible_app_ids(self) -> frozenset[str] | None:
        """Apps this caller may see: ``None`` means all (SUPER_ADMIN)."""
        return None if self.is_super else self.app_ids

    def can_see(self, app_id: str) -> bool:
        return self.is_super or app_id in self.app_ids

    def require_granted(self) -> None:
        if self.role is None:
            raise AdminError(
                FORBIDDEN,
                f"{self.label} has no fiberlinkd grant; ask an operator to run: "
                f"fiberlinkd admin grant {self.user_arg} COMMUNITY_ADMIN --app <id>",
            )

    def require_super(self, command: str) -> None:
        self.require_granted()
        if not self.is_super:
            raise AdminError(
                FORBIDDEN,
                f"{command!r} needs SUPER_ADMIN and {self.label} is COMMUNITY_ADMIN; ask an "
                f"operator to run: fiberlinkd admin grant {self.user_arg} SUPER_ADMIN",
            )

    def require_app(self, app_id: str) -> None:
        """Refuse unless the caller may act on ``app_id``.

        The refusal does not say whether the app exists, so a community admin cannot
        probe other forums' ids.
        """
        self.require_granted()
        if not self.can_see(app_id):
            raise AdminError(
                FORBIDDEN,
                f"{self.label} has no grant for app {app_id!r}; ask an operator to run: "
                f"fiberlinkd admin grant {self.user_arg} COMMUNITY_ADMIN --app {app_id}",
            )

    def filter_apps(self, app_ids: Collection[str]) -> list[str]:
        return [app_id for app_id in app_ids if self.can_see(app_id)]


def resolve_caller(
    conn: sqlite3.Connection, uid: int, *, daemon_uid: int, name: str | None
) -> Caller:
    """Read the caller's grants (a ``Ledger.read`` function)."""
    if uid == 0:
        return Caller(uid, name, Role.SUPER_ADMIN, frozenset(), "root")
    if uid == daemon_uid:
        return Caller(uid, name, Role.SUPER_ADMIN, frozenset(), "daemon uid")
    grants = grants_for_uid(conn, uid)
    if any(grant.role == SUPER_ADMIN for grant in grants):
        return Caller(uid, name, Role.SUPER_ADMIN, frozenset(), "grant")
    apps = frozenset(g.app_id for g in grants if g.role == COMMUNITY_ADMIN and g.app_id)
    if apps:
        return Caller(uid, name, Role.COMMUNITY_ADMIN, apps, "grant")
    return Caller(uid, name, None, frozenset(), "none")
