"""The object-manager namespace of server ports: names, collisions and lookups.

Not here: what a port does once found (``ports``), who may connect (``security``).

Theory of operation
-------------------
* Names are NT object names in the root directory: they start with a backslash and hold no
  other backslash (fltemu has no object directories, so ``\\Foo\\Bar`` finds no directory
  ``\\Foo``: STATUS_OBJECT_PATH_NOT_FOUND). An empty name is STATUS_OBJECT_NAME_INVALID; one
  without the leading backslash is STATUS_OBJECT_PATH_SYNTAX_BAD (§3.1).
* Creation checks collisions ignoring case when the creator asked for OBJ_CASE_INSENSITIVE,
  exactly otherwise. Lookup at connect time is always an exact, case-sensitive match: the
  FilterConnectionPort object type is not flagged case-insensitive (§2.1).
* Removing a name (FltCloseCommunicationPort, unload) takes effect at once; the same name can
  be created again while the old port's connections live on (§2.7).
"""

from __future__ import annotations

from ..errors import error_for
from ..status import NtStatus
from .ports import ServerPort

__all__ = ["PortNamespace", "check_port_name"]


def check_port_name(name: str) -> NtStatus | None:
    """The status a malformed port name fails with, or ``None`` for a good name (§3.1)."""
    if not name:
        return NtStatus.STATUS_OBJECT_NAME_INVALID
    if not name.startswith("\\"):
        return NtStatus.STATUS_OBJECT_PATH_SYNTAX_BAD
    if name == "\\" or "\x00" in name:
        return NtStatus.STATUS_OBJECT_NAME_INVALID
    if "\\" in name[1:]:
        return NtStatus.STATUS_OBJECT_PATH_NOT_FOUND
    return None


class PortNamespace:
    """Name → ServerPort, with Windows' collision and lookup rules."""

    def __init__(self) -> None:
        self._ports: dict[str, ServerPort] = {}

    def __repr__(self) -> str:
        return f"<PortNamespace {sorted(self._ports)}>"

    def __len__(self) -> int:
        return len(self._ports)

    def ports(self) -> list[ServerPort]:
        """Every named server port, in creation order."""
        return list(self._ports.values())

    def insert(self, port: ServerPort) -> None:
        """Add a new port's name.

        Raises:
            StatusError: STATUS_OBJECT_NAME_INVALID, STATUS_OBJECT_PATH_SYNTAX_BAD,
                STATUS_OBJECT_PATH_NOT_FOUND for a bad name; STATUS_OBJECT_NAME_COLLISION when
                the name is taken.
        """
        bad = check_port_name(port.name)
        if bad is not None:
            raise error_for(bad, f"bad port name '{port.name}': {bad}")
        if port.name in self._ports or (
            port.case_insensitive
            and any(name.casefold() == port.name.casefold() for name in self._ports)
        ):
            raise error_for(
                NtStatus.STATUS_OBJECT_NAME_COLLISION, f"a port named '{port.name}' exists"
            )
        self._ports[port.name] = port

    def remove(self, port: ServerPort) -> bool:
        """Remove a port's name; False if that port was not (or no longer) named."""
        if self._ports.get(port.name) is port:
            del self._ports[port.name]
            return True
        return False

    def lookup(self, name: str) -> ServerPort:
        """Find a port by exact name, for FilterConnectCommunicationPort.

        Raises:
            StatusError: the bad-name statuses of ``insert``; STATUS_OBJECT_NAME_NOT_FOUND.
        """
        port = self._ports.get(name)
        if port is not None:
            return port
        bad = check_port_name(name)
        if bad is not None:
            raise error_for(bad, f"bad port name '{name}': {bad}")
        raise error_for(NtStatus.STATUS_OBJECT_NAME_NOT_FOUND, f"no port named '{name}'")
