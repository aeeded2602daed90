"""Who may connect to a server port: a tiny model of a port's security descriptor.

Windows checks FLT_PORT_ALL_ACCESS against the port's DACL at connect time; the default
descriptor admits only SYSTEM and Administrators (§2.2). fltemu maps that onto Unix
identities taken from the socket's peer credentials: by default root and the daemon's own
user. Not here: where the credentials come from (``fltemu.daemon.session``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from .process import ProcessInfo

__all__ = ["SecurityDescriptor"]


@dataclass(frozen=True)
class SecurityDescriptor:
    """The principals a server port admits.

    ``SecurityDescriptor.default()`` is what FltBuildDefaultSecurityDescriptor gives: root and
    the user the daemon runs as. Build wider ones with ``allow``.

    Attributes:
        uids: user ids admitted.
        gids: group ids admitted (the peer's primary group).
        everyone: admit any local process (a NULL DACL).
    """

    uids: frozenset[int] = field(default_factory=frozenset)
    gids: frozenset[int] = field(default_factory=frozenset)
    everyone: bool = False

    @classmethod
    def default(cls) -> SecurityDescriptor:
        """FltBuildDefaultSecurityDescriptor: root and the daemon's own user (§2.2)."""
        return cls(uids=frozenset({0, os.geteuid()}))

    @classmethod
    def allow(
        cls,
        uids: Iterable[int] = (),
        gids: Iterable[int] = (),
        *,
        everyone: bool = False,
        include_default: bool = True,
    ) -> SecurityDescriptor:
        """A descriptor that admits the given users and groups.

        Args:
            uids: user ids to admit.
            gids: group ids to admit.
            everyone: admit every local process.
            include_default: also admit root and the daemon's user, as a DACL built on the
                default descriptor would.
        """
        base = cls.default().uids if include_default else frozenset()
        return cls(uids=base | frozenset(uids), gids=frozenset(gids), everyone=everyone)

    def admits(self, process: ProcessInfo) -> bool:
        """Whether ``process`` is granted FLT_PORT_ALL_ACCESS."""
        if self.everyone:
            return True
        if process.uid is not None and process.uid in self.uids:
            return True
        return process.gid is not None and process.gid in self.gids
