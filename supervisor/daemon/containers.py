"""Container supervision: the daemon's model of every container and the trio
tasks that start, wait for, restart and stop them.

One task per active container runs `_supervise`: launch through the zygote,
wait on the monitor's pidfd, read the exit file, ask the pure policy
(supervisor.policy.decide) what to do, sleep the backoff, repeat. Requests
from the API (`stop`, `remove`, ...) change flags and signal the monitor; they
never reap or launch themselves, so there is one code path for every exit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
import trio

from exporters.startdur import StartDurations
from exporters.view import ContainerView
from supervisor.cgroups import CgroupManager, Limits
from supervisor.cgroups import options as limit_options
from supervisor.config import ContainerSpec, validate_container
from supervisor.daemon import execs, health, statefile, translate
from supervisor.daemon.events import EventBus
from supervisor.daemon.memwatch import MemoryWatch
from supervisor.daemon.reaper import Reaper
from supervisor.daemon.statefile import read_json, write_json
from supervisor.daemon.userns import UsernsPolicy
from supervisor.errors import ConfigError, KernelError, NotFoundError, Problem, StateError
from supervisor.lifecycle import State, is_active, transition
from supervisor.network import model as netmodel
from supervisor.network import shaping
from supervisor.network.manager import NetworkManager
from supervisor.policy import decide, start_on_boot
from supervisor.runtime import devices
from supervisor.runtime.devices import DeviceRule
from supervisor.runtime.spec import IdMap
from supervisor.runtime.zygote import Launched, LaunchError, Zygote

log = structlog.get_logger("nsvisor")

# Lifecycle events of a container's runs: their state is persisted with
# statefile.write_json(later=True), "started" with sync=False (see _set_state).
_RUN_EVENTS = frozenset({"start", "started", "exit", "failed", "schedule_restart", "remove"})

# Raw keys `update` may change: the resource limits (docker update's set).
UPDATE_KEYS = frozenset(
    {
        "memory",
        "memory_swap",
        "memory_reservation",
        "memory_high",
        "cpus",
        "cpu_quota",
        "cpu_period",
        "cpu_shares",
        "cpu_weight",
        "cpuset_cpus",
        "cpuset_mems",
        "pids_limit",
        "io_weight",
        "blkio_weight_device",
        "device_read_bps",
        "device_write_bps",
        "device_read_iops",
        "device_write_iops",
        "oom_kill_disable",
        "oom_group",
        # docker update --restart: the policy decides from the next exit on.
        "restart",
    }
)
# A changed key drops the stored keys it is an alternative to: a new --memory
# without --memory-swap gets Docker's default swap again, --cpus replaces
# --cpu-quota/--cpu-period and the other way round.
_UPDATE_REPLACES: dict[str, tuple[str, ...]] = {
    "memory": ("memory_swap",),
    "cpus": ("cpu_quota", "cpu_period"),
    "cpu_quota": ("cpus",),
    "cpu_period": ("cpus",),
    "cpu_shares": ("cpu_weight",),
    "cpu_weight": ("cpu_shares",),
}


@dataclass
class Run:
    """One execution of a container's workload (a monitor process)."""

    pid: int
    pidfd: int
    pid_starttime: int | None
    started_at: float
    workload_pid: int | None = None
    done: trio.Event = field(default_factory=trio.Event)
    exit_code: int | None = None
    oom_killed: bool = False
    workload_starttime: int | None = None  # exec checks it joins this very process


@dataclass
class Container:
    name: str
    spec: ContainerSpec
    created_at: float
    dir: str
    state: State = "created"
    run: Run | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    restart_count: int = 0
    stopped_by_user: bool = False
    last_delay_s: float | None = None
    # --userns=auto: the container's host id range, from create to rm.
    idmap: IdMap | None = None
    next_restart_at: float | None = None
    error: str | None = None
    from_config: bool = False
    backoff_scope: trio.CancelScope | None = None
    supervised: bool = False
    changed: trio.Event = field(default_factory=trio.Event)
    # Health checks (supervisor.daemon.health): None without a health_cmd.
    health: str | None = None
    health_failing_streak: int = 0
    health_log: list[dict[str, Any]] = field(default_factory=list)
    # The limits and device rules this daemon last applied to the cgroup
    # (in memory only: a restarted daemon applies them again once).
    prepared: tuple[Limits, tuple[DeviceRule, ...]] | None = None
    # The cgroup was killed (cgroup.kill) since the last launch: it is made
    # anew before the next one (ContainerManager._kill_cgroup).
    cgroup_killed: bool = False

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "container.log")

    @property
    def exit_path(self) -> str:
        return os.path.join(self.dir, "exit.json")


def _proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: with the pid, identifies a process for good
    (a recycled pid has a different start time)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    return int(rest[19])


def _proc_state(pid: int) -> str | None:
    """Field 3 of /proc/PID/stat: R, S, D, Z (zombie), ..."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()[0].decode()


class ContainerManager:
    def __init__(
        self,
        *,
        state_dir: str,
        zygote: Zygote,
        cgroups: CgroupManager,
        reaper: Reaper,
        events: EventBus,
        defaults: dict[str, Any] | None = None,
        host_cpus: int | None = None,
        network: NetworkManager | None = None,
        userns: UsernsPolicy | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.userns = userns or UsernsPolicy()
        self.network = network or NetworkManager(state_dir)
        self.containers_dir = os.path.join(state_dir, "containers")
        os.makedirs(self.containers_dir, mode=0o700, exist_ok=True)
        self.zygote = zygote
        self.cgroups = cgroups
        self.reaper = reaper
        self.events = events
        self.defaults = dict(defaults or {})
        self.host_cpus = host_cpus or os.cpu_count() or 1
        self.containers: dict[str, Container] = {}
        self.views: tuple[ContainerView, ...] = ()
        self._views: dict[str, ContainerView] = {}
        # Exporter hooks: read by the metrics thread, written here.
        self.start_durations = StartDurations()
        self.memwatch = MemoryWatch(cgroups, events)
        self._nursery: trio.Nursery | None = None

    # ---- lookup -------------------------------------------------------------

    def get(self, name: str) -> Container:
        try:
            return self.containers[name]
        except KeyError:
            raise NotFoundError(f"no such container: {name}") from None

    def _set_state(self, c: Container, event: Any) -> None:
        c.state = transition(c.name, c.state, event)
        self._notify(c)
        # The transitions of a run are persisted by statefile's background
        # writer, off this thread; "started" (the pid live restore adopts) is
        # in place before anything goes on, durable a moment later; a stop
        # (the user's intent) is durable before anything goes on.
        if event == "started":
            self._persist(c, sync=False)
        else:
            self._persist(c, later=event in _RUN_EVENTS)
        self._publish_views(c)

    @staticmethod
    def _notify(c: Container) -> None:
        """Wake everyone waiting for a change of this container."""
        old, c.changed = c.changed, trio.Event()
        old.set()

    def _publish_views(self, c: Container | None = None) -> None:
        """Replace the exporter's immutable snapshot in one assignment. With
        c, only its view is made anew (or dropped once it is removed): a
        transition costs one view, not one per container (at 500 containers
        rebuilding them all took ~1 ms, four times per restart)."""
        if c is None:
            self._views = {name: self._view(one) for name, one in self.containers.items()}
        elif c.name in self.containers:
            self._views[c.name] = self._view(c)
        else:
            self._views.pop(c.name, None)
        self.views = tuple(self._views.values())

    def _view(self, c: Container) -> ContainerView:
        return ContainerView(
            name=c.name,
            cgroup_name=c.name,
            cgroup_path=self.cgroups.path(c.name),
            image=c.spec.rootfs,
            state=c.state,
            restart_count=c.restart_count,
            exit_code=c.exit_code,
            started_at=c.started_at,
            backoff_s=c.last_delay_s,
            workload_pid=(
                c.run.workload_pid if c.run and c.state in ("running", "stopping") else None
            ),
            health=c.health,
        )

    def _persist(self, c: Container, *, sync: bool = True, later: bool = False) -> None:
        run = c.run
        write_json(
            os.path.join(c.dir, "state.json"),
            {
                "state": c.state,
                "created_at": c.created_at,
                "started_at": c.started_at,
                "finished_at": c.finished_at,
                "exit_code": c.exit_code,
                "oom_killed": c.oom_killed,
                "restart_count": c.restart_count,
                "stopped_by_user": c.stopped_by_user,
                "from_config": c.from_config,
                "pid": run.pid if run else None,
                "pid_starttime": run.pid_starttime if run else None,
                "workload_pid": run.workload_pid if run else None,
                "workload_starttime": run.workload_starttime if run else None,
                "last_delay_s": c.last_delay_s,
                "health": c.health,
                "health_failing_streak": c.health_failing_streak,
                "health_log": c.health_log,
            },
            sync=sync,
            later=later,
        )

    # ---- create / remove ----------------------------------------------------

    def _new_name(self) -> str:
        while True:
            name = "c-" + secrets.token_hex(4)
            if name not in self.containers:
                return name

    def validate(self, raw: dict[str, Any]) -> ContainerSpec:
        merged = {**self.defaults, **raw}
        if not merged.get("name"):
            merged["name"] = self._new_name()
        spec = validate_container(merged, host_cpus=self.host_cpus)
        self._check_layout(spec)
        return spec

    def _check_layout(self, spec: ContainerSpec) -> None:
        """Options this host's cgroup layout cannot honour fail validation,
        before anything is created (oom_kill_disable on v2, memory_high and
        oom_group on v1)."""
        problems = limit_options.layout_problems(
            self.cgroups.layout,
            memory_high=spec.memory_high_bytes is not None,
            oom_group=spec.oom_group,
            oom_kill_disable=spec.oom_kill_disable,
        )
        if problems:
            raise ConfigError([Problem(key, message) for key, message in problems])

    async def update(self, name: str, changes: dict[str, Any]) -> Container:
        """Change a container's resource limits (docker update): validate the
        spec with `changes` applied, write the limits to the running cgroup in
        place, persist the spec (the next start, the next OOM use it). A key
        set to None returns to the default. On a kernel refusal (memory in
        use above a new v1 limit) the old limits are written back."""
        c = self.get(name)
        bad = sorted(k for k in changes if k not in UPDATE_KEYS)
        if bad:
            fix = f"update changes only {', '.join(sorted(UPDATE_KEYS))}; recreate the container"
            raise ConfigError([Problem(k, f"cannot be changed by update; {fix}") for k in bad])
        raw = c.spec.to_raw()
        for key, replaced in _UPDATE_REPLACES.items():
            if key in changes:
                for old in replaced:
                    raw.pop(old, None)
        raw.update(changes)
        spec = validate_container(
            {k: v for k, v in raw.items() if v is not None},
            host_cpus=self.host_cpus,
            check_fs=False,
        )
        self._check_layout(spec)
        # A container waiting to restart gets the new limits from the create()
        # of its next run; its cgroup may be gone meanwhile.
        if c.state in ("starting", "running", "stopping"):
            try:
                await trio.to_thread.run_sync(
                    self.cgroups.update, c.name, translate.limits_for(spec)
                )
            except KernelError:
                with trio.CancelScope(shield=True), contextlib.suppress(KernelError):
                    await trio.to_thread.run_sync(
                        self.cgroups.update, c.name, translate.limits_for(c.spec)
                    )
                raise
        c.spec = spec
        write_json(os.path.join(c.dir, "config.json"), spec.to_raw())
        self.events.publish("update", c.name, **{k: changes[k] for k in sorted(changes)})
        return c

    def limits_in_force(self, c: Container) -> dict[str, Any] | None:
        """The limits as the kernel has them (read_limits); None without a cgroup."""
        try:
            return asdict(self.cgroups.read_limits(c.name))
        except (KernelError, OSError):
            return None

    def create(self, raw: dict[str, Any]) -> Container:
        """Validate and register a container. Nothing is created on the host
        (no state entry, no cgroup) unless the whole spec is valid."""
        spec = self.validate(raw)
        self.network.check(spec.network, spec.publish)  # an unknown network: nothing registered
        target = netmodel.container_target(spec.network)
        if target is not None:
            self.get(target)
        return self.register(spec)

    def register(self, spec: ContainerSpec, *, from_config: bool = False) -> Container:
        if spec.name in self.containers:
            raise StateError(
                f"container name {spec.name!r} is already in use; "
                f"remove it first (nsvisor rm -f {spec.name}) or choose another --name"
            )
        # First what can be refused (no free id range): nothing made yet.
        idmap = (
            self.userns.allocate(spec.name, spec.rootfs) if self.userns.wants(spec.userns) else None
        )
        cdir = os.path.join(self.containers_dir, spec.name)
        os.makedirs(cdir, mode=0o700, exist_ok=True)
        c = Container(name=spec.name, spec=spec, created_at=time.time(), dir=cdir, idmap=idmap)
        c.from_config = from_config
        if idmap is not None:
            self.userns.save(cdir, idmap)
        # In place at once (a daemon crash keeps it), durable a moment later
        # (statefile's background thread): its fsync was ~0.7 ms of every
        # `run`; a power loss within that moment forgets a container created
        # in it (restore skips a directory without its config.json).
        write_json(os.path.join(cdir, "config.json"), spec.to_raw(), sync=False)
        # The log file exists from the start so that a reader can open it
        # before the first line is written (attached run, logs -f).
        with open(c.log_path, "ab"):
            pass
        self.containers[spec.name] = c
        self._persist(c, sync=False)  # in place with config.json: restore needs both
        self._publish_views(c)
        self.events.publish("create", spec.name, rootfs=spec.rootfs)
        return c

    async def remove(self, name: str, *, force: bool = False) -> None:
        c = self.get(name)
        if is_active(c.state):
            if not force:
                raise StateError(
                    f"container {name} is {c.state}: stop it first (nsvisor stop {name}) or use rm -f"
                )
            await self.kill_and_wait(c)
        self._set_state(c, "remove")
        await self.network.release(c.name)
        await trio.to_thread.run_sync(self.cgroups.remove, c.name)
        self.memwatch.retire(c.name)
        statefile.forget(os.path.join(c.dir, "state.json"))  # no late write into it
        shutil.rmtree(c.dir, ignore_errors=True)
        self.userns.release(c.name)
        del self.containers[name]
        self._publish_views(c)
        self.events.publish("destroy", name)
        self._notify(c)  # wakes an attached `run --rm` waiting for the removal

    # ---- start --------------------------------------------------------------

    def attach_nursery(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    async def start(self, name: str) -> Container:
        """Start a created or exited container; returns once the workload has
        been exec'd (or raises the launch error)."""
        c = self.get(name)
        if c.state in ("running", "starting", "stopping"):
            return c  # like docker start: starting a running container is a no-op
        if c.state == "restarting":
            # The user asks for it now: skip the rest of the backoff.
            if c.backoff_scope is not None:
                c.backoff_scope.cancel()
            return c
        c.stopped_by_user = False
        c.restart_count = 0
        c.last_delay_s = None
        assert self._nursery is not None
        await self._nursery.start(self._supervise, c)
        return c

    async def _launch(self, c: Container) -> Run:
        self._set_state(c, "start")
        c.error = None
        try:
            wanted = (translate.limits_for(c.spec), tuple(devices.rules_for(c.spec.devices)))
            if c.cgroup_killed:
                # Empty now (its run is over): made anew below (_kill_cgroup).
                await trio.to_thread.run_sync(self.cgroups.remove, c.name)
                c.cgroup_killed, c.prepared = False, None
            if c.prepared != wanted or not self._cgroup_exists(c.name):
                # A restart finds the cgroup as the last launch left it
                # (nothing but rm removes it): no thread hop, no writes.
                c.prepared = None
                await trio.to_thread.run_sync(self._prepare_cgroup, c.name, *wanted)
                c.prepared = wanted
            with contextlib.suppress(FileNotFoundError):
                os.unlink(c.exit_path)
            t0 = time.monotonic()
            net_path, net_files = await self._network_for(c)
            launched: Launched = await self.zygote.launch(
                translate.launch_spec_for(
                    c.spec,
                    self.cgroups,
                    c.log_path,
                    c.exit_path,
                    net_path=net_path,
                    net_files=net_files,
                    idmap=c.idmap,
                )
            )
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await self._network_detach(c)
            c.error = str(exc)
            self._set_state(c, "failed")
            self.events.publish("start_failed", c.name, error=str(exc))
            raise
        self.reaper.expect(launched.pid)
        run = Run(
            pid=launched.pid,
            pidfd=launched.pidfd,
            pid_starttime=_proc_starttime(launched.pid),
            started_at=launched.started_at,
            workload_pid=launched.workload_pid,
            workload_starttime=_proc_starttime(launched.workload_pid),
        )
        c.run = run
        c.started_at = run.started_at
        self.start_durations.observe(time.monotonic() - t0)
        self._set_state(c, "started")
        self.events.publish(
            "start",
            c.name,
            pid=run.pid,
            restart_count=c.restart_count,
            start_duration_s=round(time.monotonic() - t0, 6),
            started_at=run.started_at,  # the monitor's clock at exec (bench: restart latency)
        )
        return run

    async def _kill_cgroup(self, c: Container) -> None:
        """SIGKILL everything in the container's cgroup (cgroup.kill, or the
        freezer loop on v1). The next launch makes the cgroup anew: on 6.18
        a child cloned with CLONE_INTO_CGROUP into a cgroup that cgroup.kill
        has ever been written to is killed at once (the kernel compares the
        parent cgroup's kill_seq with the target's), so the workload of the
        restart after a `kill` died before its execve."""
        c.cgroup_killed = True
        await trio.to_thread.run_sync(self.cgroups.kill, c.name)

    def _cgroup_exists(self, name: str) -> bool:
        return all(os.path.isdir(os.path.dirname(f)) for f in self.cgroups.procs_files(name))

    def _prepare_cgroup(self, name: str, limits: Limits, rules: Sequence[DeviceRule]) -> None:
        """In a worker thread: the cgroup with its limits, then the device
        policy, before anything joins (only the default devices and --device
        ones)."""
        self.cgroups.create(name, limits)
        self.cgroups.set_devices(name, rules)

    def _host_if(self, c: Container) -> str:
        return netmodel.veth_name(self.network.prefix, c.name)

    async def _network_detach(self, c: Container) -> None:
        """The run's network goes: the endpoint (the veth and its qdiscs with
        it) and the ifb of --network-rate. Shielded by the callers."""
        await self.network.detach(c.name)
        if c.spec.network_rate_out_bps is not None:
            try:
                await trio.to_thread.run_sync(shaping.remove, self._host_if(c))
            except KernelError as exc:
                log.error("network.rate_remove_failed", container=c.name, error=str(exc))

    async def _network_for(self, c: Container) -> tuple[str, tuple[tuple[str, str], ...]]:
        """The network namespace to join and the files to bind for this run:
        a bridge network is set up here, before the launch; container:NAME
        joins the target's namespace (its namespace file, or its workload's
        /proc/PID/ns/net checked against the recorded start time)."""
        mode = c.spec.network
        if netmodel.uses_bridge(mode):
            att = await self.network.attach(
                c.name, mode, c.spec.hostname or c.name[:64], c.spec.publish
            )
            if c.spec.network_rate_in_bps is not None:
                # A failure here fails the launch, whose clean-up detaches.
                await trio.to_thread.run_sync(
                    shaping.apply,
                    self._host_if(c),
                    c.spec.network_rate_in_bps,
                    c.spec.network_rate_out_bps,
                )
            return att.netns_path, att.mounts
        target = netmodel.container_target(mode)
        if target is None:
            return "", ()
        t = self.get(target)
        run = t.run
        if t.state != "running" or run is None or run.workload_pid is None:
            raise StateError(
                f"container {target} is not running ({t.state}); start it before {c.name}, "
                f"which joins its network namespace (--network container:{target})"
            )
        if netmodel.uses_bridge(t.spec.network):
            return self.network.netns_path(target), self.network.files_for(target)
        if t.spec.network == "host":
            return f"/proc/{os.getpid()}/ns/net", ()
        if _proc_starttime(run.workload_pid) != run.workload_starttime:
            raise StateError(f"container {target}'s workload is gone; it is restarting?")
        return f"/proc/{run.workload_pid}/ns/net", ()

    async def _supervise(
        self,
        c: Container,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
        *,
        adopted: Run | None = None,
        after_exit: bool = False,
    ) -> None:
        """Launch, wait, decide, back off, relaunch: until the policy says stop.

        adopted: a run re-adopted after a daemon restart (not launched here).
        after_exit: start at the decision, for a container that exited while
        no daemon was watching (restore): its restart count and backoff go
        on from where they were."""
        c.supervised = True
        try:
            run: Run | None = None
            if adopted is not None:
                run = adopted
            elif not after_exit:
                run = await self._launch(c)
            task_status.started()
            resumed = adopted is not None
            while True:
                if run is not None:
                    await self._run_until_exit(c, run, resumed=resumed)
                    resumed = False
                    run_s = (c.finished_at or time.time()) - run.started_at
                else:
                    run_s = (c.finished_at or time.time()) - (c.started_at or time.time())
                decision = decide(
                    c.spec.restart,
                    c.spec.backoff,
                    exit_code=c.exit_code if c.exit_code is not None else 255,
                    restart_count=c.restart_count,
                    stopped_by_user=c.stopped_by_user,
                    run_s=run_s,
                    previous_delay_s=c.last_delay_s,
                )
                if not decision.restart:
                    break
                c.last_delay_s = decision.delay_s
                c.next_restart_at = time.time() + decision.delay_s
                self._set_state(c, "schedule_restart")
                self.events.publish(
                    "restarting",
                    c.name,
                    exit_code=c.exit_code,
                    restart_in_s=round(decision.delay_s, 3),
                    restart_count=c.restart_count + 1,
                )
                with trio.CancelScope() as scope:
                    c.backoff_scope = scope
                    await trio.sleep(decision.delay_s)
                c.backoff_scope = None
                c.next_restart_at = None
                if c.stopped_by_user or c.state != "restarting":
                    break
                c.restart_count += 1
                try:
                    run = await self._launch(c)
                except Exception as exc:  # a failed restart ends the loop, reported above
                    log.warning("container.restart_failed", container=c.name, error=str(exc))
                    break
        finally:
            c.supervised = False
            self._notify(c)
        if c.spec.auto_remove and c.state == "exited" and c.name in self.containers:
            with trio.CancelScope(shield=True):
                await self.remove(c.name)

    async def _run_until_exit(self, c: Container, run: Run, *, resumed: bool = False) -> None:
        """Wait for the run's exit, probing its health meanwhile (resumed: an
        adopted run, see _watch_health)."""
        if c.spec.health is None:
            await self._wait_exit(c, run)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(self._watch_health, c, run, resumed=resumed))
            await self._wait_exit(c, run)
            nursery.cancel_scope.cancel()

    async def _watch_health(self, c: Container, run: Run, *, resumed: bool = False) -> None:
        """resumed: a run adopted after a daemon restart goes on from the
        health its state file recorded (status, streak, log), not "starting"."""
        check = c.spec.health
        assert check is not None
        initial: health.Verdict | None = None
        if resumed and c.health in ("starting", "healthy", "unhealthy"):
            initial = health.Verdict(c.health, c.health_failing_streak)  # type: ignore[arg-type]
        else:
            c.health, c.health_failing_streak, c.health_log = "starting", 0, []
        self._publish_views(c)

        def report(verdict: health.Verdict, result: health.ProbeResult, changed: bool) -> None:
            c.health, c.health_failing_streak = verdict.status, verdict.failing_streak
            c.health_log = [*c.health_log, result.as_dict()][-health.LOG_KEEP :]
            self._persist(c, later=True)  # a restarted daemon goes on from here
            if changed:
                self._publish_views(c)
                self.events.publish(
                    "health_status",
                    c.name,
                    status=verdict.status,
                    failing_streak=verdict.failing_streak,
                    exit_code=result.exit_code,
                )

        async def probe() -> health.ProbeResult:
            return await self.probe(c, run, check.command, check.timeout_s)

        await health.watch(
            check,
            probe,
            report,
            initial=initial,
            running_for_s=max(0.0, time.time() - run.started_at) if initial else 0.0,
        )
        # Unhealthy and on_unhealthy = "restart": stop it like `stop` would
        # (stop signal, grace, SIGKILL of the cgroup) but not as the user:
        # the restart policy and its backoff decide what comes next.
        if c.state != "running" or run.done.is_set():
            return
        self.events.publish("unhealthy_restart", c.name, failing_streak=c.health_failing_streak)
        self._set_state(c, "stop")
        if c.spec.stop_signal == signal.SIGKILL:
            await self._kill_cgroup(c)
        else:
            self._signal(c, c.spec.stop_signal)
        with trio.move_on_after(c.spec.stop_timeout_s):
            await run.done.wait()
        if not run.done.is_set():
            await self._kill_cgroup(c)

    # ---- exec ---------------------------------------------------------------

    async def exec_start(
        self, name: str, req: execs.ExecRequest, stdio: list[int]
    ) -> execs.ExecSession:
        """Start a process in a running container (stdin, stdout, stderr fds;
        the caller closes its copies). ExecError when it could not start."""
        c = self.get(name)
        run = c.run
        if c.state != "running" or run is None or run.workload_pid is None:
            raise StateError(f"container {name} is not running ({c.state}); start it first")
        return await self._exec_in(c, run, req, stdio)

    async def _exec_in(
        self, c: Container, run: Run, req: execs.ExecRequest, stdio: list[int]
    ) -> execs.ExecSession:
        assert run.workload_pid is not None
        spec = execs.exec_spec_for(
            c.spec,
            self.cgroups,
            req,
            target_pid=run.workload_pid,
            target_starttime=run.workload_starttime,
        )
        session = await execs.ExecSession.start(self.zygote, spec, stdio)
        self.events.publish("exec_start", c.name, pid=session.pid, command=list(req.argv))
        return session

    async def probe(
        self, c: Container, run: Run, argv: tuple[str, ...], timeout_s: float
    ) -> health.ProbeResult:
        """Run a health probe through the exec path: (exit code, output)."""
        start = time.time()
        r, w = os.pipe2(os.O_CLOEXEC)
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            session = await self._exec_in(c, run, execs.ExecRequest(argv=argv), [devnull, w, w])
        except (execs.ExecError, ConfigError, OSError) as exc:
            os.close(r)
            failed = exc.exit_code if isinstance(exc, execs.ExecError) else -1
            return health.ProbeResult(start, time.time(), failed, str(exc))
        finally:
            os.close(w)
            os.close(devnull)
        output = b""
        code: int | None = None
        stream = trio.lowlevel.FdStream(r)
        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    nonlocal output
                    output = await execs.read_capped(stream, health.OUTPUT_LIMIT)

                nursery.start_soon(read)
                code = await session.wait()
                # A probe's background child may keep the pipe open: read on
                # for at most a second after the exit.
                nursery.cancel_scope.deadline = trio.current_time() + 1.0
        await stream.aclose()
        if code is None:
            session.kill()
            with trio.CancelScope(shield=True):
                await session.wait()
            return health.timed_out(start, timeout_s)
        return health.ProbeResult(start, time.time(), code, output.decode(errors="replace"))

    async def _wait_exit(self, c: Container, run: Run) -> None:
        # Memory-limit hits and OOM kills are published while the run lasts
        # (the "oom" event comes from there, before "die").
        async with self.memwatch.watching(c.name, c.spec.rootfs):
            await trio.lowlevel.wait_readable(run.pidfd)
        status = self.reaper.collect(run.pid)
        os.close(run.pidfd)
        try:
            record = read_json(c.exit_path)
            code = int(record["exit_code"])
            oom = bool(record.get("oom_killed", False))
            finished = float(record.get("finished_at", time.time()))
        except (OSError, ValueError, KeyError, TypeError):
            # The monitor died without writing its exit file (SIGKILL, OOM
            # kill of the monitor itself): the container's pid namespace died
            # with it; make sure nothing is left in the cgroup.
            code = status if status is not None else 255
            oom = False
            finished = time.time()
            log.warning("container.monitor_lost", container=c.name, monitor_exit=status)
            await self._kill_cgroup(c)
        run.exit_code, run.oom_killed = code, oom
        c.exit_code, c.oom_killed, c.finished_at = code, oom, finished
        if c.state == "restarting":  # adopted while in backoff: nothing to do
            pass
        with trio.CancelScope(shield=True):
            await self._network_detach(c)  # veth, namespace, rules: only while it runs
        self._set_state(c, "exit")
        run.done.set()
        self.events.publish("die", c.name, exit_code=code, oom_killed=oom, finished_at=finished)
        if oom and self.cgroups.oom_kill_file(c.name) is None:
            self.events.publish("oom", c.name)  # no memwatch without a memory controller

    # ---- stop / kill --------------------------------------------------------

    def _signal(self, c: Container, sig: int) -> None:
        run = c.run
        if run is None or run.done.is_set():
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(run.pidfd, sig)

    async def kill(self, name: str, sig: int) -> None:
        c = self.get(name)
        if c.state not in ("running", "stopping"):
            raise StateError(f"container {name} is not running ({c.state})")
        self.events.publish("kill", name, signal=signal.Signals(sig).name)
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            # The monitor forwards signals it can catch; these two it cannot,
            # and sending them to it would take down the whole pid namespace
            # without an exit record. Kill the workload's cgroup instead.
            if sig == signal.SIGSTOP:
                raise StateError("SIGSTOP cannot be forwarded; pausing is not supported")
            await self._kill_cgroup(c)
            return
        self._signal(c, sig)

    async def stop(self, name: str, timeout_s: float | None = None) -> None:
        """Stop signal, grace period, then SIGKILL of the whole cgroup. The
        container is marked stopped by the user: no policy restarts it."""
        c = self.get(name)
        c.stopped_by_user = True
        self._persist(c)
        if c.state == "restarting":
            if c.backoff_scope is not None:
                c.backoff_scope.cancel()
            self._set_state(c, "stop")
            self.events.publish("stop", name)
            return
        if c.state not in ("running", "stopping", "starting"):
            return  # already stopped: like docker, not an error
        grace = c.spec.stop_timeout_s if timeout_s is None else timeout_s
        while c.state == "starting":
            await c.changed.wait()
        run = c.run
        if run is None or c.state != "running":
            return
        self._set_state(c, "stop")
        sig = c.spec.stop_signal
        if sig == signal.SIGKILL:
            await self._kill_cgroup(c)
        else:
            self._signal(c, sig)
        with trio.move_on_after(grace):
            await run.done.wait()
        if not run.done.is_set():
            log.info("container.stop_timeout", container=name, grace_s=grace)
            await self._kill_cgroup(c)
            await run.done.wait()
        await self._wait_unsupervised(c)
        self.events.publish("stop", name, exit_code=c.exit_code)

    async def _wait_unsupervised(self, c: Container) -> None:
        while c.supervised and c.state not in ("exited", "created"):
            await c.changed.wait()

    async def kill_and_wait(self, c: Container) -> None:
        c.stopped_by_user = True
        while c.state == "starting":
            await c.changed.wait()
        if c.state == "restarting" and c.backoff_scope is not None:
            c.backoff_scope.cancel()
            self._set_state(c, "stop")
        run = c.run
        if run is not None and not run.done.is_set():
            await self._kill_cgroup(c)
            await run.done.wait()
        while c.supervised:
            await c.changed.wait()

    async def restart(self, name: str, timeout_s: float | None = None) -> Container:
        await self.stop(name, timeout_s)
        return await self.start(name)

    # ---- views --------------------------------------------------------------

    def summary(self, c: Container) -> dict[str, Any]:
        return {
            "name": c.name,
            "state": c.state,
            "pid": c.run.pid if c.run and c.state in ("running", "stopping") else None,
            "rootfs": c.spec.rootfs,
            "command": list(c.spec.command),
            "created_at": c.created_at,
            "started_at": c.started_at,
            "finished_at": c.finished_at,
            "exit_code": c.exit_code,
            "oom_killed": c.oom_killed,
            "restart_count": c.restart_count,
            "health": c.health,
        }

    def inspect(self, c: Container) -> dict[str, Any]:
        out = self.summary(c)
        out.update(
            {
                "config": c.spec.to_raw(),
                "restart_policy": str(c.spec.restart),
                "workload_pid": c.run.workload_pid if c.run and c.state == "running" else None,
                "stopped_by_user": c.stopped_by_user,
                "next_restart_at": c.next_restart_at,
                "backoff_s": c.last_delay_s,
                "error": c.error,
                "cgroup": self.cgroups.path(c.name),
                "cgroup_layout": self.cgroups.layout,
                "security": {
                    "seccomp": c.spec.seccomp_source,
                    "capabilities": sorted(c.spec.capabilities),
                    "devices": [d.to_raw() for d in c.spec.devices],
                    "no_new_privileges": True,
                    "read_only_rootfs": c.spec.read_only,
                    "userns": "host"
                    if c.idmap is None
                    else {
                        "mode": "auto",
                        "uid_map": f"0 {c.idmap.uid} {c.idmap.size}",
                        "gid_map": f"0 {c.idmap.gid} {c.idmap.size}",
                    },
                },
                "limits": self.limits_in_force(c),
                "memory_events": self.memwatch.counts(c.name),
                "oom_kills": self.memwatch.counts(c.name).get("oom_kill"),
                "log_path": c.log_path,
                "network": self.network.container_info(c.name),
                "from_config": c.from_config,
                "health_check": None
                if c.spec.health is None
                else {
                    "status": c.health,
                    "failing_streak": c.health_failing_streak,
                    "log": list(c.health_log),
                },
            }
        )
        return out

    # ---- daemon start: restore ----------------------------------------------

    def load_persisted(self) -> list[tuple[Container, dict[str, Any]]]:
        """Read every container's state directory. A corrupt entry is reported
        and skipped; it never stops the daemon."""
        out: list[tuple[Container, dict[str, Any]]] = []
        for name in sorted(os.listdir(self.containers_dir)):
            cdir = os.path.join(self.containers_dir, name)
            try:
                raw = read_json(os.path.join(cdir, "config.json"))
                st = read_json(os.path.join(cdir, "state.json"))
                spec = validate_container(raw, host_cpus=self.host_cpus, check_fs=False)
                idmap = self.userns.load(name, cdir)
            except (OSError, ValueError, KeyError, ConfigError, StateError) as exc:
                log.error("state.corrupt", container=name, path=cdir, error=str(exc))
                continue
            c = Container(
                name=spec.name,
                spec=spec,
                created_at=float(st.get("created_at", 0)),
                dir=cdir,
                idmap=idmap,
            )
            c.started_at = st.get("started_at")
            c.finished_at = st.get("finished_at")
            c.exit_code = st.get("exit_code")
            c.oom_killed = bool(st.get("oom_killed", False))
            c.restart_count = int(st.get("restart_count", 0))
            if c.spec.health is not None and st.get("health") is not None:
                c.health = str(st["health"])
                c.health_failing_streak = int(st.get("health_failing_streak", 0))
                c.health_log = list(st.get("health_log") or [])[-health.LOG_KEEP :]
            c.stopped_by_user = bool(st.get("stopped_by_user", False))
            c.from_config = bool(st.get("from_config", False))
            c.state = "exited" if st.get("state") not in ("created",) else "created"
            self.containers[c.name] = c
            out.append((c, st))
        return out

    async def restore(self, c: Container, st: dict[str, Any]) -> None:
        """Re-adopt a container whose monitor survived the previous daemon, or
        account for its exit and apply its policy. Never starts a second copy:
        a monitor that is alive is adopted, and before anything is started
        again whatever is left in the container's cgroup is killed."""
        assert self._nursery is not None
        pid, starttime = st.get("pid"), st.get("pid_starttime")
        state = st.get("state")
        c.last_delay_s = st.get("last_delay_s")
        if state in ("running", "stopping", "starting") and pid and starttime:
            run = self._adoptable(c, int(pid), int(starttime), st)
            if run is not None:
                c.run = run
                c.state = "running"
                self._persist(c)
                self._publish_views(c)
                self.events.publish("adopt", c.name, pid=run.pid, restart_count=c.restart_count)
                await self._nursery.start(functools.partial(self._supervise, c, adopted=run))
                if state == "stopping":  # the old daemon was stopping it: finish that
                    self._nursery.start_soon(self._stop_logged, c.name)
                return
        if state in ("running", "stopping", "starting"):
            # It exited while no daemon was watching: report its real code.
            try:
                record = read_json(c.exit_path)
                c.exit_code = int(record["exit_code"])
                c.oom_killed = bool(record.get("oom_killed", False))
                c.finished_at = float(record.get("finished_at", time.time()))
            except (OSError, ValueError, KeyError, TypeError):
                c.exit_code = c.exit_code if c.exit_code is not None else 255
                c.finished_at = time.time()
            self._persist(c)
            self.events.publish(
                "die",
                c.name,
                exit_code=c.exit_code,
                oom_killed=c.oom_killed,
                while_daemon_down=True,
            )
            await self._clear_cgroup(c)
            await self._nursery.start(_resume_task(self, c))
        elif state == "restarting" and not c.stopped_by_user:
            # The daemon went away during a backoff: the policy already said yes.
            await self._clear_cgroup(c)
            await self._nursery.start(_resume_task(self, c))
        elif start_on_boot(
            c.spec.restart, stopped_by_user=c.stopped_by_user, was_running=False
        ) and c.spec.restart.name in ("always", "unless-stopped"):
            await self._clear_cgroup(c)
            try:
                await self.start(c.name)
            except Exception as exc:
                log.error("container.restore_failed", container=c.name, error=str(exc))
        self._publish_views()

    def _adoptable(self, c: Container, pid: int, starttime: int, st: dict[str, Any]) -> Run | None:
        """A Run for the recorded monitor if it is still that very process,
        alive. A zombie (its parent died with the old daemon and the new
        parent, often init, has not reaped it yet) has exited: its exit file
        tells the rest."""
        if _proc_starttime(pid) != starttime or _proc_state(pid) in ("Z", "X", None):
            return None
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        # Checked again with the pidfd open: a pid recycled in between fails here.
        if _proc_starttime(pid) != starttime:
            os.close(pidfd)
            return None
        workload_pid = st.get("workload_pid")
        return Run(
            pid=pid,
            pidfd=pidfd,
            pid_starttime=starttime,
            started_at=float(st.get("started_at") or time.time()),
            workload_pid=workload_pid,
            workload_starttime=st.get("workload_starttime"),
        )

    async def reconcile_network(self, restored: list[tuple[Container, dict[str, Any]]]) -> None:
        """At daemon start, before any container is restored: the network
        endpoints of containers whose monitor still runs are kept, everything
        else of this daemon's networking in the kernel is removed (a daemon
        killed with -9 leaves veths, namespaces and rules of containers that
        died meanwhile), and addresses of unknown containers are freed."""
        running: dict[str, tuple[str, str, tuple[netmodel.PortMapping, ...]]] = {}
        for c, st in restored:
            pid, starttime = st.get("pid"), st.get("pid_starttime")
            if (
                st.get("state") in ("running", "stopping", "starting")
                and pid
                and _proc_starttime(int(pid)) == starttime
                and _proc_state(int(pid)) not in ("Z", "X", None)
                and netmodel.uses_bridge(c.spec.network)
            ):
                running[c.name] = (c.spec.network, c.spec.hostname or c.name[:64], c.spec.publish)
        self.network.forget_missing(self.containers)
        try:
            await self.network.reconcile(running)
            # ifbs of --network-rate whose container did not survive.
            keep = [self._host_if(self.get(name)) for name in running]
            await trio.to_thread.run_sync(shaping.reconcile, self.network.prefix, keep)
        except (OSError, KernelError) as exc:
            log.error("network.reconcile_failed", error=str(exc))

    async def _clear_cgroup(self, c: Container) -> None:
        """Before a restored container runs again, nothing of an earlier run
        may be left in its cgroup (a monitor we could not adopt would
        otherwise leave two copies running)."""
        try:
            if await trio.to_thread.run_sync(self.cgroups.populated, c.name):
                log.warning("container.leftover_killed", container=c.name)
                await self._kill_cgroup(c)
        except (OSError, KernelError):
            pass  # no cgroup yet: nothing to clear

    async def _stop_logged(self, name: str) -> None:
        try:
            await self.stop(name)
        except Exception as exc:
            log.error("container.stop_failed", container=name, error=str(exc))


def _resume_task(mgr: ContainerManager, c: Container) -> Callable[..., Any]:
    async def task(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await mgr._supervise(c, task_status, after_exit=True)

    return task


__all__ = ["Container", "ContainerManager", "LaunchError", "Problem", "Run"]
