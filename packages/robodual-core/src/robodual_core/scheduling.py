"""The scheduling policy of this process's threads: what a library that makes itself real-time must not leave behind.

SVT-AV1 (PyAV's AV1 encoder), run as root, switches the thread that opens it and every thread it starts to
SCHED_FIFO 99 (``robodual_envs.common.video``). :func:`restore_realtime_threads` puts such threads back; the test
suite checks with it after every test that none was left.
"""

from __future__ import annotations

import os

Scheduling = tuple[int, int]  # (policy, priority)


def current_scheduling() -> Scheduling | None:
    """This thread's scheduling policy and priority (None where the OS has no such call)."""
    if not hasattr(os, "sched_getscheduler"):
        return None
    return os.sched_getscheduler(0), os.sched_getparam(0).sched_priority


def restore_realtime_threads(scheduling: Scheduling | None) -> list[int]:
    """Put every thread of this process that is real-time (SCHED_FIFO or SCHED_RR) at another policy than
    ``scheduling`` back to it; returns the policies found on the threads changed. Threads a library lowered (Mesa's
    at SCHED_BATCH), that end meanwhile or may not be changed are left."""
    if scheduling is None or not os.path.isdir("/proc/self/task"):
        return []
    policy, priority = scheduling
    changed = []
    for tid in os.listdir("/proc/self/task"):
        try:
            found = os.sched_getscheduler(int(tid))
            if found in (os.SCHED_FIFO, os.SCHED_RR) and found != policy:
                os.sched_setscheduler(int(tid), policy, os.sched_param(priority))
                changed.append(found)
        except (OSError, ValueError):
            continue
    return changed
