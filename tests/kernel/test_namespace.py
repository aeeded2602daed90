"""The port namespace (§2.1, §2.7, §3.1, §8.1-8.2): names, collisions, lookups, create checks."""

from __future__ import annotations

import pytest

from fltemu.errors import StatusError
from fltemu.kernel import Filter, FilterManager, ServerPortState
from fltemu.kernel.namespace import check_port_name
from fltemu.status import NtStatus

from .conftest import Connector, PortFactory, Recorder

S = NtStatus


async def expect_status(status: NtStatus, awaitable: object) -> StatusError:
    with pytest.raises(StatusError) as info:
        await awaitable  # type: ignore[misc]
    assert info.value.status == status, info.value.status
    return info.value


# --- collisions (§2.1 "Name semantics") ----------------------------------------------------


async def test_exact_name_collides_2_1(make_port: PortFactory) -> None:
    await make_port("\\Dup")
    for ci in (True, False):
        await expect_status(S.STATUS_OBJECT_NAME_COLLISION, make_port("\\Dup", case_insensitive=ci))


async def test_case_insensitive_creator_collides_with_other_case_2_1(
    make_port: PortFactory,
) -> None:
    await make_port("\\ScannerPort", case_insensitive=False)
    # OBJ_CASE_INSENSITIVE on the *new* port makes its collision check ignore case.
    await expect_status(
        S.STATUS_OBJECT_NAME_COLLISION, make_port("\\SCANNERPORT", case_insensitive=True)
    )


async def test_case_sensitive_creator_does_not_collide_with_other_case_2_1(
    make_port: PortFactory, manager: FilterManager
) -> None:
    first = await make_port("\\ScannerPort", case_insensitive=True)
    second = await make_port("\\scannerport", case_insensitive=False)
    assert first is not second
    assert len(manager.namespace) == 2
    assert manager.namespace.lookup("\\ScannerPort") is first
    assert manager.namespace.lookup("\\scannerport") is second


async def test_failed_create_leaves_namespace_untouched_2_1(
    make_port: PortFactory, manager: FilterManager, flt: Filter
) -> None:
    original = await make_port("\\Dup")
    await expect_status(S.STATUS_OBJECT_NAME_COLLISION, make_port("\\Dup"))
    assert manager.namespace.ports() == [original]
    assert flt.server_ports == [original]


# --- connect-time lookup (§2.1, §3.1) ------------------------------------------------------


async def test_connect_lookup_is_exact_and_case_sensitive_2_1(
    make_port: PortFactory, connect: Connector, rec: Recorder
) -> None:
    await make_port("\\ScannerPort", case_insensitive=True)
    for wrong in ("\\scannerport", "\\SCANNERPORT", "\\ScannerPort ", "\\ScannerPor"):
        await expect_status(S.STATUS_OBJECT_NAME_NOT_FOUND, connect(wrong))
    assert rec.connects == []
    user = await connect("\\ScannerPort")
    assert user.port.server_port.name == "\\ScannerPort"


async def test_connect_unknown_name_not_found_3_1(connect: Connector, flt: Filter) -> None:
    await expect_status(S.STATUS_OBJECT_NAME_NOT_FOUND, connect("\\NoSuchPort"))


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("", S.STATUS_OBJECT_NAME_INVALID),
        ("ScannerPort", S.STATUS_OBJECT_PATH_SYNTAX_BAD),
        ("\\Foo\\Bar", S.STATUS_OBJECT_PATH_NOT_FOUND),
    ],
)
async def test_bad_names_on_connect_3_1(
    connect: Connector, make_port: PortFactory, name: str, status: NtStatus
) -> None:
    await make_port("\\Foo")  # a port named like the "directory" does not make it one
    await expect_status(status, connect(name))


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("", S.STATUS_OBJECT_NAME_INVALID),
        ("ScannerPort", S.STATUS_OBJECT_PATH_SYNTAX_BAD),
        ("\\Foo\\Bar", S.STATUS_OBJECT_PATH_NOT_FOUND),
    ],
)
async def test_bad_names_on_create_3_1(
    make_port: PortFactory, manager: FilterManager, name: str, status: NtStatus
) -> None:
    await expect_status(status, make_port(name))
    assert len(manager.namespace) == 0


def test_check_port_name_table_3_1() -> None:
    assert check_port_name("") == S.STATUS_OBJECT_NAME_INVALID
    assert check_port_name("Port") == S.STATUS_OBJECT_PATH_SYNTAX_BAD
    assert check_port_name("\\Foo\\Bar") == S.STATUS_OBJECT_PATH_NOT_FOUND
    assert check_port_name("\\ScannerPort") is None


# --- FltCloseCommunicationPort (§2.7) -----------------------------------------------------


async def test_close_server_port_removes_name_at_once_2_7(
    make_port: PortFactory, flt: Filter, connect: Connector, manager: FilterManager
) -> None:
    port = await make_port("\\Gone")
    await flt.close_communication_port(port)
    assert port.state is ServerPortState.CLOSED
    assert len(manager.namespace) == 0
    assert flt.server_ports == []
    await expect_status(S.STATUS_OBJECT_NAME_NOT_FOUND, connect("\\Gone"))


async def test_recreated_name_keeps_old_connections_on_old_callbacks_2_7(
    flt: Filter, connect: Connector
) -> None:
    old, new = (
        Recorder(message=(S.STATUS_SUCCESS, b"old")),
        Recorder(message=(S.STATUS_SUCCESS, b"new")),
    )

    def port_options(r: Recorder) -> dict[str, object]:
        return {
            "connect_notify": r.connect_notify,
            "disconnect_notify": r.disconnect_notify,
            "message_notify": r.message_notify,
            "max_connections": 1,
        }

    old_port = await flt.create_communication_port("\\Same", **port_options(old))  # type: ignore[arg-type]
    old_user = await connect("\\Same")
    await flt.close_communication_port(old_port)

    # The name can be created again at once, with a fresh connection count (§2.7).
    new_port = await flt.create_communication_port("\\Same", **port_options(new))  # type: ignore[arg-type]
    assert new_port is not old_port
    new_user = await connect("\\Same")
    assert new_user.port.server_port is new_port
    assert len(new.connects) == 1 and len(old.connects) == 1

    # The old connection still works, and still uses the OLD port's callbacks.
    assert old_user.port.user_send(b"ping", 16) == (S.STATUS_SUCCESS, b"old")
    assert new_user.port.user_send(b"ping", 16) == (S.STATUS_SUCCESS, b"new")
    assert len(old.messages) == 1 and len(new.messages) == 1

    # Kernel → user on the old connection works too.
    token = old_user.get()
    result = await flt.send_message(old_user.port, b"hello")
    assert result.status == S.STATUS_SUCCESS
    assert old_user.completions[-1].token == token
    assert old_user.completions[-1].data == b"hello"

    await old_user.port.user_close()
    assert old.disconnects == [None] and new.disconnects == []
    assert old_port.connection_count == 0
    assert new_port.connection_count == 1


async def test_close_server_port_twice_is_invalid_handle_2_7(
    make_port: PortFactory, flt: Filter
) -> None:
    port = await make_port()
    await flt.close_communication_port(port)
    await expect_status(S.STATUS_INVALID_HANDLE, flt.close_communication_port(port))


async def test_close_other_filters_port_is_invalid_handle_2_7(
    make_port: PortFactory, manager: FilterManager
) -> None:
    port = await make_port()
    other = manager.register_filter("other")
    await expect_status(S.STATUS_INVALID_HANDLE, other.close_communication_port(port))
    assert port.state is ServerPortState.OPEN


# --- create validation (§2.1, §8.2) -------------------------------------------------------


@pytest.mark.parametrize("max_connections", [0, -1])
async def test_max_connections_must_be_positive_2_1(
    make_port: PortFactory, manager: FilterManager, max_connections: int
) -> None:
    err = await expect_status(
        S.STATUS_INVALID_PARAMETER, make_port(max_connections=max_connections)
    )
    assert isinstance(err, StatusError)
    assert len(manager.namespace) == 0


@pytest.mark.parametrize("missing", ["connect_notify", "disconnect_notify"])
async def test_connect_and_disconnect_notify_required_2_1(
    make_port: PortFactory, manager: FilterManager, missing: str
) -> None:
    await expect_status(S.STATUS_INVALID_PARAMETER, make_port(**{missing: None}))
    assert len(manager.namespace) == 0


async def test_message_notify_is_optional_2_1(make_port: PortFactory) -> None:
    port = await make_port(message_notify=None)
    assert port.message_notify is None


async def test_create_after_unload_is_deleting_object_2_1(
    make_port: PortFactory, flt: Filter
) -> None:
    await flt.unload()
    await expect_status(S.STATUS_FLT_DELETING_OBJECT, make_port())


async def test_unload_removes_every_name_6_6(
    make_port: PortFactory, flt: Filter, connect: Connector, manager: FilterManager
) -> None:
    await make_port("\\A")
    await make_port("\\B")
    await flt.unload()
    assert len(manager.namespace) == 0
    for name in ("\\A", "\\B"):
        await expect_status(S.STATUS_OBJECT_NAME_NOT_FOUND, connect(name))


async def test_names_are_shared_across_filters_2_1(
    make_port: PortFactory, manager: FilterManager, rec: Recorder
) -> None:
    await make_port("\\Shared")
    other = manager.register_filter("other")
    await expect_status(
        S.STATUS_OBJECT_NAME_COLLISION,
        other.create_communication_port(
            "\\Shared",
            connect_notify=rec.connect_notify,
            disconnect_notify=rec.disconnect_notify,
            max_connections=1,
        ),
    )


async def test_filter_names_are_unique_until_unload(manager: FilterManager, flt: Filter) -> None:
    await expect_status(S.STATUS_OBJECT_NAME_COLLISION, _register(manager, "testflt"))
    await flt.unload()
    again = manager.register_filter("testflt")
    assert again is not flt
    await again.unload()


async def _register(manager: FilterManager, name: str) -> Filter:
    return manager.register_filter(name)
