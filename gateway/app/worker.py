"""A worker process of `serve --workers N`: one full gateway on the supervisor's port.

The supervisor starts `python -m gateway.app.worker` with the database it prepared in
`SITEBUILDER_DATABASE_URL`, the port it reserved in `SITEBUILDER_PORT`, and the
variables of gateway.app.supervisor. A worker must never outlive its supervisor (it
would keep the port and a replication slot with nobody to stop it), so it asks the
kernel for SIGTERM when the supervisor dies, and exits at once if that already
happened.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

import uvloop

from gateway.app import serve
from gateway.app.cli import configure_logging, guarded
from gateway.app.supervisor import (
    FEED_SOCKET_ENV,
    READY_FD_ENV,
    SUPERVISOR_PID_ENV,
    WORKER_INDEX_ENV,
)
from gateway.settings import Settings

PR_SET_PDEATHSIG = 1


def die_with_supervisor(supervisor_pid: int) -> None:
    """SIGTERM this process when the supervisor dies (Linux); exit if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != supervisor_pid:
        sys.exit(f"worker: supervisor {supervisor_pid} is gone")


def signal_ready(fd: int) -> None:
    os.write(fd, b"1")
    os.close(fd)


def main() -> int:
    index = int(os.environ[WORKER_INDEX_ENV])
    die_with_supervisor(int(os.environ[SUPERVISOR_PID_ENV]))
    ready_fd = int(os.environ[READY_FD_ENV])
    feed_socket = os.environ[FEED_SOCKET_ENV]
    settings = Settings()
    configure_logging(settings, prefix=f"[worker {index}] ")
    return guarded(
        lambda: uvloop.run(
            serve.run_worker(settings, index, feed_socket, lambda: signal_ready(ready_fd))
        )
    )


if __name__ == "__main__":
    sys.exit(main())
