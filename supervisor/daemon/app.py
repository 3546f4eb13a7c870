"""`nsvisor daemon`: load the config, fork the zygote, then run one trio loop
with the reaper, the control API, the metrics server and every container task.

Nursery nesting (STYLE habit 5): the reaper, the API and the metrics server
live in the outer nursery, the containers in the inner one, so during a
graceful shutdown the API still answers while containers are being stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import fcntl
import os
import resource
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Any

import structlog
import trio

from supervisor import __version__
from supervisor.config import ContainerSpec, DaemonConfig, load_config
from supervisor.daemon import logsetup, statefile, systemd
from supervisor.errors import ConfigError, NotFoundError, NsvisorError, Problem, StateError

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
    def __init__(
        self,
        cfg: DaemonConfig,
        zygote: Any,
        config_path: str | None,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        from exporters import server as metrics_server
        from supervisor.cgroups import open_manager
        from supervisor.cgroups._fs import stat_fd_budget
        from supervisor.daemon.containers import ContainerManager
        from supervisor.daemon.events import EventBus
        from supervisor.daemon.reaper import Reaper
        from supervisor.daemon.userns import UsernsPolicy
        from supervisor.network.manager import NetworkManager

        self.cfg = cfg
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self._reload_lock = trio.Lock()
        self.events = EventBus()
        self.reaper = Reaper()
        # The scrapes' stat files are kept open in the collector process
        # (exporters/collectord.py); the daemon's own reads (nsvisor stats, a
        # scrape while the collector starts) open them per read.
        self.cgroups = open_manager(
            cfg.cgroup_root,
            cfg.cgroup_parent,
            stat_fds=0 if metrics_server.COLLECTOR_PROCESS else stat_fd_budget(),
        )
        self.manager = ContainerManager(
            state_dir=cfg.state_dir,
            zygote=zygote,
            cgroups=self.cgroups,
            reaper=self.reaper,
            events=self.events,
            defaults=dict(getattr(cfg, "backoff_defaults", {})),
            network=NetworkManager(
                cfg.state_dir,
                prefix=cfg.net_prefix,
                bridge=cfg.bridge,
                subnet=cfg.bridge_subnet,
                networks=cfg.networks,
            ),
            userns=UsernsPolicy(
                default=cfg.userns,
                user=cfg.userns_user,
                subuid_file=cfg.subuid_file,
                subgid_file=cfg.subgid_file,
                size=cfg.userns_size,
            ),
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
                # The API answers and every container is adopted or started.
                systemd.sd_notify(
                    f"READY=1\nSTATUS=supervising {len(self.manager.containers)} containers"
                )
                log.info(
                    "daemon.ready",
                    version=__version__,
                    socket=self.cfg.socket,
                    metrics_addr=self.cfg.metrics_addr,
                    cgroup_layout=self.cgroups.layout,
                    containers=len(self.manager.containers),
                )
                await self.shutdown.wait()
                systemd.sd_notify("STOPPING=1")
                if self.cfg.stop_containers_on_shutdown:
                    async with trio.open_nursery() as stoppers:
                        for c in list(self.manager.containers.values()):
                            stoppers.start_soon(self.manager.stop, c.name)
                inner.cancel_scope.cancel()
            log.info("daemon.stopped", live_restore=not self.cfg.stop_containers_on_shutdown)
            outer.cancel_scope.cancel()

    async def _start_containers(self) -> None:
        restored = self.manager.load_persisted()
        await self.manager.reconcile_network(restored)
        for c, st in restored:
            await self.manager.restore(c, st)
        for spec in self.cfg.containers:
            name = spec.name
            existing = self.manager.containers.get(name)
            if existing is not None:
                if existing.spec == spec:
                    # Restored above, by its policy: a container that exited
                    # for good stays exited (live restore starts nothing twice).
                    existing.from_config = True
                    if existing.state == "created":
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
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for sig in signals:
                log.info("daemon.signal", signal=signal.Signals(sig).name)
                if sig == signal.SIGHUP:
                    await self._reload_logged()
                else:
                    self.shutdown.set()

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except ConfigError as exc:
            for p in exc.problems:
                log.error("daemon.reload_rejected", problem=p.render(exc.source))
        except NsvisorError as exc:
            log.error("daemon.reload_failed", error=str(exc))

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file; apply the difference to the containers
        that came from it. A config with any problem is rejected whole
        (ConfigError, the same problems as check-config) before anything
        changes. Returns {"added", "removed", "changed", "unchanged"}."""
        if not self.ready.is_set():
            raise StateError("the daemon is still starting; reload once it is ready")
        async with self._reload_lock:
            systemd.sd_notify("RELOADING=1")
            try:
                return await self._reload()
            finally:
                systemd.sd_notify("READY=1")

    async def _reload(self) -> dict[str, Any]:
        if self.config_path is None:
            raise StateError("the daemon runs without a config file (--config); nothing to reload")
        path = self.config_path
        cfg = await trio.to_thread.run_sync(lambda: load_config(path, overrides=self.overrides))
        m = self.manager
        problems = [
            Problem(
                f"[containers.{spec.name}]",
                f"a container named {spec.name} already exists and was not created from the "
                f"config file; remove it (nsvisor rm -f {spec.name}) or rename the table",
            )
            for spec in cfg.containers
            if spec.name in m.containers and not m.containers[spec.name].from_config
        ]
        if problems:
            raise ConfigError(problems, cfg.source)
        wanted = {spec.name: spec for spec in cfg.containers}
        plan = reload_plan({n: c.spec for n, c in m.containers.items() if c.from_config}, wanted)
        log.info("daemon.reload", **{k: v for k, v in plan.items() if v})

        async def retire(name: str) -> None:
            with contextlib.suppress(NotFoundError):
                await m.stop(name)
                await m.remove(name, force=True)

        async with trio.open_nursery() as nursery:  # stopped in parallel
            for name in plan["removed"] + plan["changed"]:
                nursery.start_soon(retire, name)
        for name in plan["added"] + plan["changed"]:
            m.register(wanted[name], from_config=True)
            await self._start_logged(name)
        self.cfg = dataclasses.replace(self.cfg, containers=cfg.containers)
        self.events.publish("reload", "daemon", **plan)
        return plan

    async def _serve_api(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from hypercorn.config import Config

        from supervisor.daemon.api import Api
        from supervisor.daemon.peercred import serve_unix

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
        cli_server = _spawn_cli_server(path)
        config = Config()
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 1.0
        config.keep_alive_timeout = 60.0
        config.h2_max_concurrent_streams = 1000
        api = Api(self.manager, self.events, reload=self.reload, ready=self.ready)
        try:
            async with trio.open_nursery() as n:
                # root peers only (SO_PEERCRED), on top of the 0600 mode
                await n.start(serve_unix, api, config, sock)
                task_status.started()
        finally:
            if os.path.exists(path):
                os.unlink(path)
            if cli_server is not None:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(cli_server, signal.SIGTERM)  # it unlinks its socket
                os.close(cli_server)

    async def _serve_metrics(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from exporters.server import serve_metrics

        await serve_metrics(self.cfg.metrics_addr, self.manager, task_status=task_status)


def _raise_nofile() -> None:
    """RLIMIT_NOFILE soft up to the hard limit, for the collector process
    the daemon starts (which inherits it): it keeps the stat files of every
    running container open between scrapes (16 fds per container on
    hybrid, 12 on v2; _fs.StatFiles takes half of what the soft limit
    leaves, and opens per read beyond it). systemd starts services with
    1024:524288."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def reload_plan(
    current: Mapping[str, ContainerSpec], wanted: Mapping[str, ContainerSpec]
) -> dict[str, list[str]]:
    """What a reload does to the containers that came from the config file. Pure."""
    return {
        "added": sorted(n for n in wanted if n not in current),
        "removed": sorted(n for n in current if n not in wanted),
        "changed": sorted(n for n in wanted if n in current and current[n] != wanted[n]),
        "unchanged": sorted(n for n in wanted if n in current and current[n] == wanted[n]),
    }


def _spawn_cli_server(control_socket: str) -> int | None:
    """The command server of the C client (supervisor.cliserver), its own
    lean Python process, started once the control socket is ours; returns
    its pidfd (None if it could not start: the client then runs the CLI
    through Python). It ends with the daemon (PDEATHSIG); the Reaper reaps it."""
    from supervisor.cliserver import socket_path

    argv = [sys.executable, "-m", "supervisor.cliserver", socket_path(control_socket)]
    try:
        pid = os.posix_spawn(sys.executable, [*argv, str(os.getpid())], os.environ)
        return os.pidfd_open(pid)
    except OSError as exc:
        log.warning("cli_server.start_failed", error=str(exc))
        return None


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
    # Under systemd (Delegate=yes): into a leaf cgroup before the zygote is
    # forked, containers in a sibling subtree. Elsewhere: nothing moves.
    delegated = systemd.enter_delegated_leaf(cfg.cgroup_root)
    if delegated is not None and cfg.cgroup_parent == DaemonConfig.cgroup_parent:
        cfg = dataclasses.replace(cfg, cgroup_parent=delegated)
    from supervisor.runtime import seccomp
    from supervisor.runtime.caps import DEFAULT_CAPS
    from supervisor.runtime.zygote import Zygote

    # seccomp programs built once, here, and inherited by every workload the
    # zygote forks: the default profile and those of the config's containers.
    for problem in seccomp.prepare(
        [(seccomp.DEFAULT, DEFAULT_CAPS), *((c.seccomp, c.capabilities) for c in cfg.containers)]
    ):
        log.warning("seccomp.prepare_failed", error=problem)
    # The zygote is forked before trio starts any thread (STYLE: fork only
    # from a single-threaded process).
    try:
        zygote = Zygote.spawn()
    except NsvisorError as exc:  # the C monitor was not built
        print(f"nsvisor: {exc}", file=sys.stderr)
        os.close(lock_fd)
        return 1
    # After the fork: the zygote, and every container it starts, keeps the
    # limit the daemon was started with.
    _raise_nofile()
    errors: list[BaseException] = []
    try:
        daemon = Daemon(cfg, zygote, config_path, overrides)
        try:
            trio.run(daemon.main)
        finally:
            daemon.cgroups.close()  # the stat fds, before anything else runs select()
    except* NsvisorError as group:
        errors.extend(group.exceptions)
    finally:
        zygote.close()
        statefile.flush(timeout_s=10.0)  # the last transitions, before the lock goes
        os.close(lock_fd)
    for err in errors:
        print(f"nsvisor: {err}", file=sys.stderr)
    return 1 if errors else 0
