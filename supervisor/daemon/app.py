"""`nsvisor daemon`: load the config, fork the zygote, then run one trio loop
with the reaper, the control API, the metrics server and every container task.

Nursery nesting (STYLE habit 5): the reaper, the API and the metrics server
live in the outer nursery, the containers in the inner one, so during a
graceful shutdown the API still answers while containers are being stopped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Any

import structlog
import trio

from supervisor import __version__
from supervisor.config import DaemonConfig, load_config
from supervisor.daemon import logsetup
from supervisor.errors import ConfigError, NsvisorError

log = structlog.get_logger("nsvisor")

PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def _socket_in_use(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        return False
    finally:
        s.close()
    return True


def _lock_state_dir(state_dir: str) -> int:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fd = os.open(
        os.path.join(state_dir, "daemon.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise NsvisorError(
                f"another nsvisor daemon is using the state directory {state_dir}; "
                "stop it or pass a different --state-dir"
            ) from None
        raise
    return fd


class Daemon:
    def __init__(self, cfg: DaemonConfig, zygote: Any, config_path: str | None) -> None:
        from supervisor.cgroups import open_manager
        from supervisor.daemon.containers import ContainerManager
        from supervisor.daemon.events import EventBus
        from supervisor.daemon.reaper import Reaper

        self.cfg = cfg
        self.config_path = config_path
        self.events = EventBus()
        self.reaper = Reaper()
        self.cgroups = open_manager(cfg.cgroup_root, cfg.cgroup_parent)
        self.manager = ContainerManager(
            state_dir=cfg.state_dir,
            zygote=zygote,
            cgroups=self.cgroups,
            reaper=self.reaper,
            events=self.events,
            defaults=dict(getattr(cfg, "backoff_defaults", {})),
        )
        self.shutdown = trio.Event()
        self.ready = trio.Event()

    async def main(self) -> None:
        async with trio.open_nursery() as outer:
            await outer.start(self.reaper.run)
            outer.start_soon(self._signals)
            await outer.start(self._serve_api)
            await outer.start(self._serve_metrics)
            async with trio.open_nursery() as inner:
                self.manager.attach_nursery(inner)
                await self._start_containers()
                self.ready.set()
                log.info(
                    "daemon.ready",
                    version=__version__,
                    socket=self.cfg.socket,
                    metrics_addr=self.cfg.metrics_addr,
                    cgroup_layout=self.cgroups.layout,
                    containers=len(self.manager.containers),
                )
                await self.shutdown.wait()
                if self.cfg.stop_containers_on_shutdown:
                    async with trio.open_nursery() as stoppers:
                        for c in list(self.manager.containers.values()):
                            stoppers.start_soon(self.manager.stop, c.name)
                inner.cancel_scope.cancel()
            log.info("daemon.stopped", live_restore=not self.cfg.stop_containers_on_shutdown)
            outer.cancel_scope.cancel()

    async def _start_containers(self) -> None:
        restored = self.manager.load_persisted()
        for c, st in restored:
            await self.manager.restore(c, st)
        for spec in self.cfg.containers:
            name = spec.name
            existing = self.manager.containers.get(name)
            if existing is not None:
                if existing.spec == spec:
                    if existing.state not in ("running", "starting", "restarting", "stopping"):
                        await self._start_logged(name)
                    continue
                # The file changed while the daemon was down: the file wins.
                await self.manager.remove(name, force=True)
            self.manager.register(spec, from_config=True)
            await self._start_logged(name)

    async def _start_logged(self, name: str) -> None:
        try:
            await self.manager.start(name)
        except Exception as exc:
            log.error("container.start_failed", container=name, error=str(exc))

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for sig in signals:
                log.info("daemon.signal", signal=signal.Signals(sig).name)
                self.shutdown.set()

    async def _serve_api(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from hypercorn.config import Config
        from hypercorn.trio import serve

        from supervisor.daemon.api import Api

        path = self.cfg.socket
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        if _socket_in_use(path):
            raise NsvisorError(
                f"another nsvisor daemon is listening on {path}; stop it or pass a different --socket"
            )
        if os.path.lexists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is created 0600: root only
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(128)
        config = Config()
        # hypercorn wraps the fd in a socket object of its own and closes it.
        config.bind = [f"fd://{sock.detach()}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 1.0
        config.keep_alive_timeout = 60.0
        config.h2_max_concurrent_streams = 1000
        api = Api(self.manager, self.events)
        try:
            async with trio.open_nursery() as n:
                await n.start(serve, api, config)
                task_status.started()
        finally:
            if os.path.exists(path):
                os.unlink(path)

    async def _serve_metrics(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from exporters.server import serve_metrics

        await serve_metrics(self.cfg.metrics_addr, self.manager, task_status=task_status)


def run(config_path: str | None, overrides: Mapping[str, str] | None = None) -> int:
    try:
        cfg = load_config(config_path, overrides=dict(overrides or {}))
    except ConfigError as exc:
        print(f"nsvisor: {exc}", file=sys.stderr)
        return 2
    logsetup.configure(cfg.log_level, cfg.log_format)
    try:
        lock_fd = _lock_state_dir(cfg.state_dir)
    except NsvisorError as exc:
        print(f"nsvisor: {exc}", file=sys.stderr)
        return 1
    _set_subreaper()
    from supervisor.runtime.zygote import Zygote

    # The zygote is forked before trio starts any thread (STYLE: fork only
    # from a single-threaded process).
    zygote = Zygote.spawn()
    errors: list[BaseException] = []
    try:
        trio.run(Daemon(cfg, zygote, config_path).main)
    except* NsvisorError as group:
        errors.extend(group.exceptions)
    finally:
        zygote.close()
        os.close(lock_fd)
    for err in errors:
        print(f"nsvisor: {err}", file=sys.stderr)
    return 1 if errors else 0
