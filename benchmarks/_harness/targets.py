"""The speed targets that run_all.py checks."""

from __future__ import annotations

from typing import Any, Final

#: The speed targets, checked by run_all.py. Each names the script's row it reads (``bench``
#: and ``match``; rows of the uvloop daemon first), the figure (``metric``) and its goal
#: (``min`` or ``max``); a target without a goal is reported for information. Every figure is a
#: ratio to a reference measured in the same run, except the memory ones.
TARGETS: Final[list[dict[str, Any]]] = [
    {
        "id": "cpu-k2u64",
        "what": "daemon CPU per message, kernel->user, 64 readers (native client)",
        "bench": "daemon",
        "match": {"impl": "fltemu", "mode": "k2u", "depth": 64},
        "metric": "cpu_ratio_base",
        "max": 1 / 3,
    },
    {
        "id": "cpu-send64",
        "what": "daemon CPU per message, user->kernel sends, 64 in flight (native client)",
        "bench": "daemon",
        "match": {"impl": "fltemu", "mode": "send", "depth": 64},
        "metric": "cpu_ratio_base",
        "max": 1 / 3,
    },
    {
        "id": "k2u64",
        "what": "kernel->user send_message + reply, 64 pending readers, reply_and_get (async)",
        "bench": "kernel_to_user",
        "match": {"impl": "fltemu", "client": "async", "readers": 64, "reader": "reply_and_get"},
        "metric": "ratio_bare",
        "min": 1.0,
    },
    {
        "id": "k2u1",
        "what": "kernel->user send_message + reply, 1 reader, reply_and_get (async client)",
        "bench": "kernel_to_user",
        "match": {"impl": "fltemu", "client": "async", "readers": 1, "reader": "reply_and_get"},
        "metric": "ratio_bare",
        "min": 0.9,
    },
    {
        "id": "k2u1-separate",
        "what": "kernel->user, 1 reader, reply then get_message (async client)",
        "bench": "kernel_to_user",
        "match": {"impl": "fltemu", "client": "async", "readers": 1, "reader": "reply, get"},
        "metric": "ratio_bare",
    },
    {
        "id": "seq-sync",
        "what": "user->kernel send, sequential (sync client)",
        "bench": "roundtrip",
        "match": {"impl": "fltemu", "client": "sync", "scenario": "seq"},
        "metric": "ratio_bare",
        "min": 0.9,
    },
    {
        "id": "seq-async",
        "what": "user->kernel send, sequential (async client)",
        "bench": "roundtrip",
        "match": {"impl": "fltemu", "client": "async", "scenario": "seq"},
        "metric": "ratio_bare",
        "min": 0.9,
    },
    {
        "id": "conc8",
        "what": "user->kernel send, 8 connections each sequential (async client)",
        "bench": "roundtrip",
        "match": {"impl": "fltemu", "client": "async", "scenario": "conc8"},
        "metric": "ratio_bare",
        "min": 0.9,
    },
    {
        "id": "pipe64",
        "what": "user->kernel send, 64 in flight on one connection (async client)",
        "bench": "roundtrip",
        "match": {"impl": "fltemu", "client": "async", "scenario": "pipe64"},
        "metric": "ratio_bare",
        "min": 1.2,
    },
    {
        "id": "pipe64-sync",
        "what": "user->kernel send, 64 threads on one connection (sync client)",
        "bench": "roundtrip",
        "match": {"impl": "fltemu", "client": "sync", "scenario": "pipe64"},
        "metric": "ratio_bare",
    },
    {
        "id": "k2u64-sync",
        "what": "kernel->user, 64 reader threads on one connection (sync client)",
        "bench": "kernel_to_user",
        "match": {"impl": "fltemu", "client": "sync", "readers": 64, "reader": "reply_and_get"},
        "metric": "ratio_bare",
    },
    {
        "id": "idle-mem",
        "what": "daemon memory per idle connection (KiB)",
        "bench": "connections",
        "match": {"kind": "summary"},
        "metric": "kib_per_connection",
        "max": 20.0,
    },
    {
        "id": "idle-effect",
        "what": "1,000 idle connections: largest change of another figure (%)",
        "bench": "connections",
        "match": {"kind": "summary"},
        "metric": "max_abs_change_pct",
        "max": 10.0,
    },
]
