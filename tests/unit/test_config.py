"""supervisor.config: every bad input gives a named, fixable problem, and all
problems of a request or a file are reported at once."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import (
    DEFAULT_PATH,
    ContainerSpec,
    DaemonConfig,
    Mount,
    check_config,
    find_command,
    find_line,
    load_config,
    resolve_in_rootfs,
    split_host_port,
    validate_container,
)
from supervisor.errors import ConfigError
from supervisor.policy import Backoff, RestartPolicy

MiB = 1024 * 1024


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A tiny fake rootfs: an executable, symlinks (absolute, relative, one
    that tries to climb out), a non-executable file, passwd and group."""
    root = tmp_path / "rootfs"
    for d in ("bin", "usr/bin", "usr/local/bin", "etc", "app"):
        (root / d).mkdir(parents=True)
    busybox = root / "bin" / "busybox"
    busybox.write_text("#!/bin/busybox\n")
    busybox.chmod(0o755)
    (root / "bin" / "sh").symlink_to("/bin/busybox")  # absolute: relative to the rootfs
    (root / "usr" / "bin" / "env").symlink_to("../../bin/busybox")
    (root / "usr" / "local" / "bin" / "escape").symlink_to("../../../../../../../../../bin/true")
    (root / "bin" / "data").write_text("not a program")
    (root / "bin" / "data").chmod(0o644)
    (root / "bin" / "dir").mkdir()
    (root / "app" / "run").write_text("#!/bin/sh\n")
    (root / "app" / "run").chmod(0o700)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nwheel:x:10:root,www\nwww:x:33:\nstaff:x:50:\n")
    return root


def raw_for(rootfs: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "web", "rootfs": str(rootfs), "command": ["/bin/sh", "-c", "echo hi"], **extra}


def problems(raw: dict[str, Any], **kw: Any) -> dict[str, str]:
    """field -> message of every problem (the last one per field)."""
    with pytest.raises(ConfigError) as info:
        validate_container(raw, **kw)
    return {p.field: p.message for p in info.value.problems}


# ---------------------------------------------------------------------------
# A valid container


def test_minimal_container_gets_docker_defaults(rootfs: Path) -> None:
    spec = validate_container(raw_for(rootfs))
    assert spec.name == "web"
    assert spec.hostname == "web"
    assert spec.command == ("/bin/sh", "-c", "echo hi")
    assert spec.env == (f"PATH={DEFAULT_PATH}",)
    assert (spec.uid, spec.gid, spec.additional_gids) == (0, 0, (10,))
    assert spec.memory_bytes is None and spec.swap_bytes is None
    assert spec.restart == RestartPolicy("no") and spec.backoff == Backoff()
    assert spec.stop_signal == 15 and spec.stop_timeout_s == 10.0
    assert spec.network == "none" and spec.pid == "private"
    assert "NET_RAW" in spec.capabilities and "SYS_ADMIN" not in spec.capabilities


def test_full_container_is_normalised(rootfs: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    spec = validate_container(
        raw_for(
            rootfs,
            command="sh -c 'echo hi there'",
            env={"DEBUG": "1", "PORT": 8080},
            workdir="/app/",
            user="www",
            hostname="h1",
            memory="64m",
            memory_swap="128m",
            cpus=1.5,
            cpu_shares=512,
            pids_limit=100,
            io_weight=500,
            restart="on-failure:3",
            backoff_initial="200ms",
            backoff_factor=3,
            backoff_max="1m",
            backoff_reset="30s",
            volumes=[f"{data}:/data:ro", f"{data}/:/data2"],
            tmpfs=["/run:size=64m,mode=1777", "/tmp:noexec"],
            read_only=True,
            stop_signal="SIGQUIT",
            stop_timeout=30,
            network="host",
            ipc="host",
            cap_add=["cap_net_admin"],
            cap_drop=["NET_RAW"],
        ),
        host_cpus=4,
    )
    assert spec.command == ("sh", "-c", "echo hi there")
    assert spec.env == (f"PATH={DEFAULT_PATH}", "DEBUG=1", "PORT=8080")
    assert spec.workdir == "/app"
    assert (spec.uid, spec.gid, spec.additional_gids) == (33, 33, (10,))
    assert spec.memory_bytes == 64 * MiB and spec.swap_bytes == 64 * MiB
    assert spec.memory_swap_bytes == 128 * MiB
    assert (spec.cpu_quota_us, spec.cpu_period_us, spec.cpus) == (150_000, 100_000, 1.5)
    assert spec.restart == RestartPolicy("on-failure", 3)
    assert spec.backoff == Backoff(initial_s=0.2, factor=3.0, max_s=60.0, reset_after_s=30.0)
    assert spec.mounts == (
        Mount("bind", "/data", source=str(data), read_only=True),
        Mount("bind", "/data2", source=str(data), read_only=False),
        Mount("tmpfs", "/run", size_bytes=64 * MiB, mode=0o1777),
        Mount("tmpfs", "/tmp", flags=("noexec",)),
    )
    assert spec.stop_signal == 3 and spec.stop_timeout_s == 30.0
    assert "NET_ADMIN" in spec.capabilities and "NET_RAW" not in spec.capabilities


@pytest.mark.parametrize(
    ("memory", "memory_swap", "swap_bytes"),
    [
        ("64m", None, 64 * MiB),  # Docker: unset swap with memory = as much swap again
        ("64m", -1, None),  # unlimited swap
        ("64m", "-1", None),
        ("64m", "64m", 0),  # no swap
        ("64m", "100m", 36 * MiB),
        (None, None, None),
    ],
)
def test_memory_swap_docker_semantics(
    rootfs: Path, memory: Any, memory_swap: Any, swap_bytes: int | None
) -> None:
    raw = raw_for(rootfs)
    if memory is not None:
        raw["memory"] = memory
    if memory_swap is not None:
        raw["memory_swap"] = memory_swap
    assert validate_container(raw).swap_bytes == swap_bytes


@pytest.mark.parametrize(("given", "expected"), [(-1, None), (0, None), (100, 100)])
def test_pids_limit_minus_one_and_zero_mean_unlimited(
    rootfs: Path, given: int, expected: int | None
) -> None:
    assert validate_container(raw_for(rootfs, pids_limit=given)).pids_limit == expected


def test_user_forms(rootfs: Path) -> None:
    def ids(user: Any) -> tuple[int, int, tuple[int, ...]]:
        s = validate_container(raw_for(rootfs, user=user))
        return s.uid, s.gid, s.additional_gids

    assert ids("1000") == (1000, 0, ())
    assert ids(1000) == (1000, 0, ())
    assert ids("1000:1000") == (1000, 1000, ())
    assert ids("33") == (33, 33, (10,))  # numeric uid with a passwd entry
    assert ids("www:staff") == (33, 50, ())
    assert ids("root") == (0, 0, (10,))


# ---------------------------------------------------------------------------
# Round trip


def test_round_trip_spec_to_raw_to_spec(rootfs: Path, tmp_path: Path) -> None:
    raw = raw_for(
        rootfs,
        user="www",
        memory="64m",
        cpus=0.33,
        pids_limit=10,
        cpu_weight=200,
        restart="always",
        volumes=[f"{tmp_path}:/host"],
        tmpfs=["/run:size=1m,mode=755,nosuid,ro"],
        stop_signal="KILL",
        cap_drop=["ALL"],
        cap_add=["NET_BIND_SERVICE"],
        env=["A=1"],
    )
    spec = validate_container(raw, host_cpus=2)
    again = validate_container(spec.to_raw(), host_cpus=2)
    assert again == spec
    assert validate_container(again.to_raw(), host_cpus=2).to_raw() == spec.to_raw()
    assert spec.capabilities == frozenset({"NET_BIND_SERVICE"})


def test_round_trip_of_defaults_and_unlimited_swap(rootfs: Path) -> None:
    for raw in (raw_for(rootfs), raw_for(rootfs, memory="1g", memory_swap=-1)):
        spec = validate_container(raw)
        assert validate_container(spec.to_raw()) == spec


def test_round_trip_without_fs_checks(rootfs: Path) -> None:
    """The daemon restores persisted specs with check_fs=False; user names still resolve."""
    spec = validate_container(raw_for(rootfs, user="www"))
    assert validate_container(spec.to_raw(), check_fs=False) == spec


# ---------------------------------------------------------------------------
# Bad input: one named problem each, with the fix


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(
        {
            "name": "-bad name",
            "rootfs": str(tmp_path / "missing"),
            "command": ["httpd"],
            "memory": "-5M",
            "cpus": 64,
            "restart": "sometimes",
            "volumes": ["relative:/data"],
            "memroy": "1g",
            "network": "container:",
        },
        host_cpus=4,
    )
    assert set(found) == {
        "name",
        "rootfs",
        "memory",
        "cpus",
        "restart",
        "volumes",
        "memroy",
        "network",
    }
    assert found["memroy"] == "unknown key; did you mean memory?"
    assert found["memory"].startswith('"-5M" is negative; use a size like 64M or 1g')
    assert found["cpus"] == "64 is more than the 4 CPUs of this host; use at most 4"
    missing = tmp_path / "missing"
    assert (
        found["rootfs"]
        == f"rootfs {missing} does not exist; build one with `nsvisor rootfs busybox {missing}`"
    )
    assert "unknown restart policy" in found["restart"] and "on-failure[:N]" in found["restart"]
    assert "is not an absolute host path" in found["volumes"]
    assert "is not a container name" in found["network"]
    assert "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}" in found["name"]


@pytest.mark.parametrize(
    ("extra", "field", "fragment"),
    [
        ({"memory": "abc"}, "memory", '"abc" is not a size; use a size like 64M'),
        ({"memory": "5m"}, "memory", "below the minimum of 6MiB"),
        ({"memory": "64m", "memory_swap": "32m"}, "memory_swap", "is less than memory"),
        ({"memory_swap": "1g"}, "memory_swap", "set memory too"),
        ({"cpus": 0}, "cpus", "must be more than 0"),
        ({"cpus": -1}, "cpus", "must be more than 0"),
        ({"cpus": "lots"}, "cpus", "is not a number"),
        ({"cpu_shares": 1}, "cpu_shares", "from 2 to 262144"),
        ({"cpu_weight": 10001}, "cpu_weight", "from 1 to 10000"),
        ({"cpu_shares": 512, "cpu_weight": 100}, "cpu_weight", "set one of them"),
        ({"pids_limit": -2}, "pids_limit", "-1 (or 0) for unlimited"),
        ({"io_weight": 5}, "io_weight", "from 10 to 1000"),
        ({"restart": "on-failure:x"}, "restart", "not a whole number"),
        ({"restart": 3}, "restart", "not a string"),
        ({"backoff_initial": "soon"}, "backoff_initial", "is not a duration"),
        ({"backoff_factor": 0.5}, "backoff_factor", "less than 1"),
        ({"backoff_max": "10ms"}, "backoff_max", "less than backoff_initial"),
        ({"volumes": ["/a"]}, "volumes", 'is not "SRC:DST[:ro|rw]"'),
        ({"volumes": ["/nonexistent-src-xyz:/data"]}, "volumes", "does not exist on the host"),
        ({"volumes": ["/tmp:data"]}, "volumes", "not an absolute path in the container"),
        ({"volumes": ["/tmp:/data:rx"]}, "volumes", "is not ro or rw"),
        ({"volumes": ["/tmp:/"]}, "volumes", "cannot mount over the container's root"),
        ({"volumes": "/tmp:/a:ro:x"}, "volumes", 'is not "SRC:DST[:ro|rw]"'),
        ({"volumes": ["/tmp:/a", "/tmp:/a"]}, "volumes", "mounted twice"),
        ({"tmpfs": ["run"]}, "tmpfs", "destination must be an absolute path"),
        ({"tmpfs": ["/run:size=lots"]}, "tmpfs", "is not a size"),
        ({"tmpfs": ["/run:mode=999"]}, "tmpfs", "is not octal"),
        ({"tmpfs": ["/run:exotic"]}, "tmpfs", "unknown option"),
        ({"read_only": "yes"}, "read_only", "is not a boolean; use true or false"),
        ({"stop_signal": "SIGNOPE"}, "stop_signal", "unknown signal"),
        ({"stop_timeout": -1}, "stop_timeout", "is negative"),
        ({"network": "container:"}, "network", "is not a container name"),
        ({"network": "no such"}, "network", '"bridge", "container:NAME" or the name'),
        ({"publish": ["8080:80"]}, "publish", "needs a bridge network"),
        ({"network": "bridge", "publish": ["80"]}, "publish", "HOST_PORT:CONTAINER_PORT"),
        ({"pid": "shared"}, "pid", 'use "private" (the default) or "host"'),
        ({"cgroupns": 1}, "cgroupns", "not a namespace mode"),
        ({"cap_add": ["NET_ADMN"]}, "cap_add", "unknown capability"),
        ({"cap_drop": "chown"}, "cap_drop", None),
        ({"auto_remove": True, "restart": "always"}, "auto_remove", "conflicts with restart"),
        ({"user": "nobody"}, "user", "not found in"),
        ({"user": "www:nogroup"}, "user", 'group "nogroup" not found'),
        ({"user": "a:b:c"}, "user", 'is not "UID[:GID]"'),
        ({"workdir": "app"}, "workdir", "is not an absolute path"),
        ({"env": ["NOVALUE"]}, "env", 'is not "KEY=VALUE"'),
        ({"env": 5}, "env", "neither a list"),
        ({"hostname": "x" * 65}, "hostname", "not a valid host name"),
        ({"uts": "host", "hostname": "h"}, "hostname", 'cannot be set with uts = "host"'),
        ({"name": "a" * 64}, "name", "at most 63"),
        ({"name": "web/1"}, "name", "not a valid name"),
        ({"name": 5}, "name", "is not a string"),
        ({"command": []}, "command", "is empty"),
        ({"command": "sh -c 'unbalanced"}, "command", "fix the quoting"),
        ({"image": "nginx"}, "image", "not an image; use rootfs"),
        ({"blkio_weight": 10}, "blkio_weight", "did you mean io_weight?"),
        ({"stop_timeot": 10}, "stop_timeot", "did you mean stop_timeout?"),
    ],
)
def test_bad_field_gives_named_problem(
    rootfs: Path, extra: dict[str, Any], field: str, fragment: str | None
) -> None:
    raw = raw_for(rootfs, **extra)
    if extra == {"cap_drop": "chown"}:  # a single string is taken as a one-item list
        validate_container(raw)
        return
    found = problems(raw, host_cpus=4)
    assert field in found, found
    assert fragment is not None and fragment in found[field], found[field]


def test_missing_required_keys(tmp_path: Path) -> None:
    found = problems({})
    assert set(found) == {"name", "rootfs", "command"}
    assert "nsvisor rootfs busybox" in found["rootfs"]


def test_rootfs_must_be_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    assert (
        "is not a directory"
        in problems({"name": "a", "rootfs": str(f), "command": ["x"]})["rootfs"]
    )
    assert (
        "not an absolute path"
        in problems({"name": "a", "rootfs": "rel", "command": ["x"]})["rootfs"]
    )


def test_missing_rootfs_not_checked_without_check_fs(tmp_path: Path) -> None:
    spec = validate_container(
        {"name": "a", "rootfs": str(tmp_path / "gone"), "command": ["x"]}, check_fs=False
    )
    assert spec.rootfs == str(tmp_path / "gone")


# ---------------------------------------------------------------------------
# The command must resolve inside the rootfs


@pytest.mark.parametrize(
    "command", ["/bin/busybox", "/bin/sh", "sh", "env", "busybox", "/usr/bin/env", "/app/run"]
)
def test_command_resolves_inside_rootfs(rootfs: Path, command: str) -> None:
    validate_container(raw_for(rootfs, command=[command]))


def test_command_not_found_names_rootfs_and_path(rootfs: Path) -> None:
    found = problems(raw_for(rootfs, command=["httpd", "-f"]))
    assert found["command"] == (
        f'command "httpd" not found in rootfs {rootfs} (searched PATH {DEFAULT_PATH}); '
        "give an absolute path or install it in the rootfs"
    )


def test_command_search_uses_the_containers_path(rootfs: Path) -> None:
    assert validate_container(raw_for(rootfs, command=["run"], env=["PATH=/app"])).command == (
        "run",
    )
    assert (
        "searched PATH /nowhere"
        in problems(raw_for(rootfs, command=["sh"], env=["PATH=/nowhere"]))["command"]
    )


def test_relative_command_path_is_from_workdir(rootfs: Path) -> None:
    validate_container(raw_for(rootfs, command=["./run"], workdir="/app"))
    assert "command" in problems(raw_for(rootfs, command=["./run"]))


@pytest.mark.parametrize(
    "command", ["/bin/data", "data", "/bin/dir", "/bin/nothing", "escape", "/usr/local/bin/escape"]
)
def test_command_must_be_executable_regular_file_inside(rootfs: Path, command: str) -> None:
    """Not executable, a directory, missing, or a symlink that would leave the
    rootfs (it is confined: ../../.. stops at the rootfs's /)."""
    assert os.path.exists("/bin/true") or command != "escape"
    assert "not found in rootfs" in problems(raw_for(rootfs, command=[command]))["command"]


def test_resolve_in_rootfs_confines_symlinks(rootfs: Path) -> None:
    real = os.path.realpath(rootfs)
    assert resolve_in_rootfs(str(rootfs), "/bin/sh") == f"{real}/bin/busybox"
    assert resolve_in_rootfs(str(rootfs), "/usr/bin/env") == f"{real}/bin/busybox"
    assert resolve_in_rootfs(str(rootfs), "/../../etc/passwd") == f"{real}/etc/passwd"
    assert resolve_in_rootfs(str(rootfs), "/usr/local/bin/escape") is None
    (rootfs / "loop").symlink_to("/loop")
    assert resolve_in_rootfs(str(rootfs), "/loop") is None


def test_find_command(rootfs: Path) -> None:
    real = os.path.realpath(rootfs)
    assert find_command(str(rootfs), "sh", path_env="/usr/bin:/bin") == f"{real}/bin/busybox"
    assert find_command(str(rootfs), "sh", path_env="relative:/usr/bin") is None
    mode = (rootfs / "bin" / "busybox").stat().st_mode
    assert stat.S_IMODE(mode) == 0o755


# ---------------------------------------------------------------------------
# The config file

CONFIG_OK = """\
[daemon]
state_dir = "/var/lib/nsvisor-test"
metrics_addr = "[::1]:9400"
log_level = "debug"

[defaults]
restart = "always"
stop_timeout = 5

[containers.web]
rootfs = "{rootfs}"
command = "sh -c 'httpd -f'"
memory = "64m"

[containers."db.1"]
rootfs = "{rootfs}"
command = ["/bin/busybox"]
restart = "no"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nsvisor.toml"
    path.write_text(text)
    return path


def test_load_config(tmp_path: Path, rootfs: Path) -> None:
    cfg = load_config(write(tmp_path, CONFIG_OK.format(rootfs=rootfs)), host_cpus=2)
    assert cfg.state_dir == "/var/lib/nsvisor-test"
    assert (cfg.metrics_host, cfg.metrics_port) == ("::1", 9400)
    assert cfg.log_level == "debug" and cfg.socket == DaemonConfig().socket
    web, db = cfg.containers
    assert web.name == "web" and web.restart == RestartPolicy("always") and web.stop_timeout_s == 5
    assert db.name == "db.1" and db.restart == RestartPolicy("no")


def test_load_config_overrides_and_no_file(tmp_path: Path) -> None:
    cfg = load_config(None, overrides={"socket": "/tmp/x.sock", "cgroup_parent": "/test/"})
    assert (cfg.socket, cfg.cgroup_parent, cfg.containers, cfg.source) == (
        "/tmp/x.sock",
        "test",
        (),
        None,
    )
    with pytest.raises(
        ConfigError, match=r"metrics_addr \(command line\): \"nope\" is not HOST:PORT"
    ):
        load_config(None, overrides={"metrics_addr": "nope"})


def test_check_config_ok(tmp_path: Path, rootfs: Path) -> None:
    assert check_config(write(tmp_path, CONFIG_OK.format(rootfs=rootfs))) == []


def test_malformed_toml_gives_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\nsocket = "/run/x.sock"\nlog_level = debug\n')
    (line,) = check_config(path)
    assert line.startswith(f"{path}:3: syntax: ")
    assert "line 3" in line and "fix the TOML syntax" in line


def test_missing_file(tmp_path: Path) -> None:
    (line,) = check_config(tmp_path / "none.toml")
    assert (
        line
        == f"{tmp_path / 'none.toml'}: config: file does not exist; give the path of a TOML file (see deploy/nsvisor.toml)"
    )


BAD_CONFIG = """\
[daemon]
socket = "relative.sock"
metrics_adr = "127.0.0.1:1"

[defaults]
restart = "sometimes"
colour = "blue"

[containers.web]
rootfs = "{rootfs}"
command = ["httpd"]
memory = "-5M"
memroy = "1g"
cpus = 16

[containers.db]
rootfs = "{missing}"
command = ["/bin/sh"]
volumes = ["data:/data"]

[containers."bad name"]
rootfs = "{rootfs}"
command = ["sh"]

[images]
x = 1
"""


def test_check_config_reports_every_problem_with_file_line_table_and_key(
    tmp_path: Path, rootfs: Path
) -> None:
    missing = tmp_path / "missing"
    path = write(tmp_path, BAD_CONFIG.format(rootfs=rootfs, missing=missing))
    lines = check_config(path, host_cpus=4)
    f = str(path)
    expected_prefixes = [
        f'{f}:2: [daemon] socket: "relative.sock" is not an absolute path',
        f"{f}:3: [daemon] metrics_adr: unknown key; did you mean metrics_addr?",
        f"{f}:6: [defaults] restart: unknown restart policy 'sometimes'",
        f"{f}:7: [defaults] colour: unknown key;",
        f'{f}:11: [containers.web] command: command "httpd" not found in rootfs {rootfs}',
        f'{f}:12: [containers.web] memory: "-5M" is negative; use a size like 64M or 1g',
        f"{f}:13: [containers.web] memroy: unknown key; did you mean memory?",
        f"{f}:14: [containers.web] cpus: 16 is more than the 4 CPUs of this host; use at most 4",
        f"{f}:17: [containers.db] rootfs: rootfs {missing} does not exist; build one with `nsvisor rootfs busybox {missing}`",
        f'{f}:19: [containers.db] volumes: "data:/data": source "data" is not an absolute host path',
        f'{f}:21: [containers."bad name"] name: "bad name" is not a valid name',
        f"{f}:25: images: unknown top-level key;",
    ]
    for prefix in expected_prefixes:
        assert any(line.startswith(prefix) for line in lines), (prefix, lines)
    # the bad default is reported once, at [defaults], not once per container
    assert sum("sometimes" in line for line in lines) == 1
    assert len(lines) == len(expected_prefixes), lines


def test_container_table_shapes(tmp_path: Path, rootfs: Path) -> None:
    path = write(tmp_path, "containers = 5\n")
    assert check_config(path) == [
        f"{path}:1: containers: must be a table; write it as [containers]"
    ]
    path = write(
        tmp_path,
        f'[containers]\nweb = 5\n[containers.db]\nname = "other"\nrootfs = "{rootfs}"\ncommand = "sh"\n',
    )
    lines = check_config(path)
    assert lines[0] == f"{path}:2: [containers] web: must be a table; write it as [containers.web]"
    assert lines[1].startswith(
        f'{path}:4: [containers.db] name: "other" differs from the table\'s name'
    )


def test_missing_key_points_at_table_header(tmp_path: Path) -> None:
    path = write(tmp_path, '[containers.web]\ncommand = "sh"\n')
    (line,) = [x for x in check_config(path) if "rootfs" in x]
    assert line.startswith(f"{path}:1: [containers.web] rootfs: missing;")


def test_find_line() -> None:
    text = (
        "# comment\n"
        "[daemon]\n"
        "socket = '/x'\n"
        '[containers."my.app"]  # a comment\n'
        'command = [\n  "sh",\n]\n'
        '"memory" = "1g"\n'
        "[containers.inline]\n"
        "[containers]\n"
        "other = { rootfs = '/r' }\n"
    )
    assert find_line(text, ("daemon",), "socket") == 3
    assert find_line(text, ("containers", "my.app")) == 4
    assert find_line(text, ("containers", "my.app"), "memory") == 8
    assert find_line(text, ("containers", "my.app"), "cpus") == 4  # not there: the header
    assert find_line(text, ("containers", "other"), "rootfs") == 11  # inline table: via the parent
    assert find_line(text, (), "nothing") is None


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("127.0.0.1:9323", ("127.0.0.1", 9323)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_split_host_port(addr: str, expected: tuple[str, int]) -> None:
    assert split_host_port(addr) == expected


@pytest.mark.parametrize("addr", ["9323", "::1:80", "host:99999", "host:", ":80"])
def test_split_host_port_rejects(addr: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(addr)


def test_daemon_keys_validated(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[daemon]\nlog_level = "loud"\nlog_format = "xml"\nstop_containers_on_shutdown = "yes"\n'
        f'socket = "/{"s" * 120}.sock"\ncgroup_parent = "../escape"\n',
    )
    fields = [line.split(": ")[1] for line in check_config(path)]
    assert fields == [
        "[daemon] log_level",
        "[daemon] log_format",
        "[daemon] stop_containers_on_shutdown",
        "[daemon] socket",
        "[daemon] cgroup_parent",
    ]


def test_spec_is_frozen(rootfs: Path) -> None:
    spec: ContainerSpec = validate_container(raw_for(rootfs))
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
