"""User namespaces, the pure parts: subordinate id files, the per-container
range allocator, the mapping in the LaunchSpec, the mount plan with a user
namespace, and the daemon's settings."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import check_config, load_config
from supervisor.daemon.userns import (
    RangeAllocator,
    SubIdEntry,
    UsernsPolicy,
    ensure_range,
    parse_subid,
)
from supervisor.errors import StateError
from supervisor.runtime.spec import IdMap, LaunchSpec, LaunchSpecError, Mount
from supervisor.runtime.workload import MakeDev, MountFs, RootBind, Symlink, rootfs_plan

SIZE = 65536


def _spec(**kw: Any) -> LaunchSpec:
    base: dict[str, Any] = {
        "name": "web",
        "rootfs": "/srv/rootfs",
        "argv": ("httpd", "-f"),
        "log_path": "/var/lib/nsvisor/web.log",
        "exit_path": "/var/lib/nsvisor/web.exit",
    }
    return LaunchSpec(**{**base, **kw})


# --- subordinate id files -------------------------------------------------------


def test_parse_subid_names_the_bad_lines() -> None:
    text = "# comment\nalice:100000:65536\n\nbob:200000\ncarol:x:5\n"
    with pytest.raises(StateError) as e:
        parse_subid(text, "/etc/subuid")
    assert str(e.value) == (
        "/etc/subuid:4: 'bob:200000' is not NAME:START:COUNT; "
        "/etc/subuid:5: 'carol:x:5' is not NAME:START:COUNT (fix or remove the line)"
    )
    assert parse_subid("alice:100000:65536\n", "f") == [SubIdEntry("alice", 100000, 65536)]


def test_ensure_range_adds_an_entry_beside_the_others(tmp_path: Path) -> None:
    path = tmp_path / "subuid"
    path.write_text("alice:100000:65536\nbob:165536:65536")  # no final newline
    os.chmod(path, 0o640)
    entry = ensure_range(str(path), "nsvisor", SIZE, slots=4)
    # The first free start at or after alice's and bob's ends, slot-aligned.
    assert entry == SubIdEntry("nsvisor", 262144, 4 * SIZE)
    assert path.read_text() == ("alice:100000:65536\nbob:165536:65536\nnsvisor:262144:262144\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    # Once there, it is read, not added again.
    assert ensure_range(str(path), "nsvisor", SIZE, slots=4) == entry
    assert path.read_text().count("nsvisor") == 1


def test_ensure_range_fills_a_gap_and_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "subgid"
    path.write_text("far:1000000000:65536\n")
    entry = ensure_range(str(path), "nsvisor", SIZE, slots=2)
    assert entry.start == 131072 and entry.end <= 1000000000  # below the other one
    missing = tmp_path / "absent"
    assert ensure_range(str(missing), "nsvisor", SIZE, slots=1).start == 131072
    assert missing.read_text() == "nsvisor:131072:65536\n"


def test_ensure_range_keeps_the_users_own_entry(tmp_path: Path) -> None:
    path = tmp_path / "subuid"
    path.write_text("nsvisor:500000:65536\nnsvisor:900000:1000000\n")
    assert ensure_range(str(path), "nsvisor", SIZE) == SubIdEntry("nsvisor", 900000, 1000000)


# --- the allocator ----------------------------------------------------------------


def _allocator(slots: int = 3) -> RangeAllocator:
    return RangeAllocator(
        SubIdEntry("nsvisor", 1 << 20, slots * SIZE),
        SubIdEntry("nsvisor", 2 << 20, slots * SIZE + 5),
        SIZE,
        "test ranges",
    )


def test_ranges_never_overlap_and_are_freed_at_release() -> None:
    a = _allocator()
    maps = [a.allocate(n) for n in ("x", "y", "z")]
    assert [m.uid for m in maps] == [1 << 20, (1 << 20) + SIZE, (1 << 20) + 2 * SIZE]
    assert [m.gid for m in maps] == [2 << 20, (2 << 20) + SIZE, (2 << 20) + 2 * SIZE]
    assert a.allocate("x") == maps[0]  # a container keeps its range
    with pytest.raises(StateError, match="no free user namespace range: all 3 ranges"):
        a.allocate("w")
    a.release("y")
    assert a.allocate("w") == maps[1]
    assert a.in_use() == {"x": maps[0], "w": maps[1], "z": maps[2]}


def test_claim_restores_and_refuses_foreign_or_shared_ranges() -> None:
    a = _allocator()
    a.claim("x", a.idmap(2))
    assert a.allocate("y").uid == 1 << 20  # slot 0: 2 is taken
    with pytest.raises(StateError, match="also recorded for x"):
        a.claim("z", a.idmap(2))
    with pytest.raises(StateError, match="not a slot"):
        a.claim("z", IdMap(uid=(1 << 20) + 5, gid=2 << 20, size=SIZE))


def test_a_rootfs_shifted_for_a_slot_gets_that_slot() -> None:
    a = _allocator()
    shifted_for = a.idmap(1).uid
    assert a.allocate("x", prefer_uid=shifted_for) == a.idmap(1)
    with pytest.raises(StateError, match="shifted for container x's user namespace"):
        a.allocate("y", prefer_uid=shifted_for)
    # An owner that is no slot's first uid is no preference.
    assert a.allocate("y", prefer_uid=12345) == a.idmap(0)


def test_ids_from_2_31_on_are_not_used() -> None:
    a = RangeAllocator(
        SubIdEntry("n", (1 << 31) - 2 * SIZE, 10 * SIZE),
        SubIdEntry("n", 100000, 10 * SIZE),
        SIZE,
        "s",
    )
    assert a.slots == 2


def test_a_range_too_small_for_one_container_is_refused() -> None:
    with pytest.raises(StateError, match="hold no user namespace of 65536 ids"):
        RangeAllocator(SubIdEntry("n", 100000, 1000), SubIdEntry("n", 100000, SIZE), SIZE, "src")


def test_policy_default_and_persistence(tmp_path: Path) -> None:
    uid_file, gid_file = tmp_path / "subuid", tmp_path / "subgid"
    policy = UsernsPolicy("auto", "nsv", str(uid_file), str(gid_file), SIZE)
    assert policy.wants("") and policy.wants("auto") and not policy.wants("host")
    assert not UsernsPolicy().wants("") and not uid_file.exists()  # host: files untouched
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    idmap = policy.allocate("c1", str(rootfs))
    assert uid_file.read_text().startswith("nsv:") and gid_file.read_text().startswith("nsv:")
    cdir = tmp_path / "c1"
    cdir.mkdir()
    policy.save(str(cdir), idmap)
    # A new daemon: the range is the container's again, another one gets another.
    again = UsernsPolicy("auto", "nsv", str(uid_file), str(gid_file), SIZE)
    assert again.load("c1", str(cdir)) == idmap
    assert again.allocate("c2", str(rootfs)) != idmap
    assert again.load("c9", str(tmp_path)) is None  # no userns.json: userns=host
    # A range that is no slot of the present files (they were edited): the
    # container is still known with the mapping its processes run with.
    odd = IdMap(uid=5000, gid=5000, size=SIZE)
    policy.save(str(cdir), odd)
    assert again.load("c3", str(cdir)) == odd


# --- LaunchSpec and the mount plan ---------------------------------------------------


def test_idmap_validation_and_round_trip() -> None:
    idmap = IdMap(uid=200000, gid=300000, size=SIZE)
    spec = _spec(idmap=idmap, uid=1000, gid=1000, additional_gids=(5,))
    assert LaunchSpec.from_json(spec.to_json()) == spec
    assert (spec.host_uid(1000), spec.host_gid(5)) == (201000, 300005)
    assert idmap.map_lines() == ("0 200000 65536\n", "0 300000 65536\n")
    assert _spec().host_uid(7) == 7
    with pytest.raises(LaunchSpecError, match="uid 70000 is outside"):
        _spec(idmap=idmap, uid=70000)
    with pytest.raises(LaunchSpecError, match="host root is never mapped"):
        IdMap(uid=0, gid=100000, size=SIZE)
    with pytest.raises(LaunchSpecError, match="beyond id 2"):
        IdMap(uid=(1 << 31) - 100, gid=100000, size=SIZE)


def test_plan_with_a_user_namespace_gives_the_container_root_its_mounts() -> None:
    idmap = IdMap(uid=200000, gid=300000, size=SIZE)
    ops = rootfs_plan(
        _spec(idmap=idmap, mounts=(Mount(type="tmpfs", destination="/run", options=("size=1m",)),))
    )
    assert RootBind("/srv/rootfs") in ops
    data = {op.target: op.data for op in ops if isinstance(op, MountFs)}
    assert data["/dev"] is not None and data["/dev"].endswith(",uid=200000,gid=300000")
    assert data["/dev/shm"] is not None and "uid=200000,gid=300000" in data["/dev/shm"]
    assert data["/run"] == "size=1m,uid=200000,gid=300000"
    explicit = rootfs_plan(
        _spec(
            idmap=idmap,
            mounts=(
                Mount(type="tmpfs", destination="/srv", options=("uid=5", "gid=7", "mode=700")),
            ),
        )
    )
    srv = next(op for op in explicit if isinstance(op, MountFs) and op.target == "/srv")
    assert srv.data == "uid=200005,gid=300007,mode=700"
    assert data["/dev/pts"] is not None and "gid=300005" in data["/dev/pts"]
    assert {(op.uid, op.gid) for op in ops if isinstance(op, MakeDev | Symlink)} == {
        (200000, 300000)
    }
    # Without one: the plan as before (host ids, a plain bind of the rootfs).
    plain = rootfs_plan(_spec())
    assert not any(isinstance(op, RootBind) for op in plain)
    assert {(op.uid, op.gid) for op in plain if isinstance(op, MakeDev | Symlink)} == {(0, 0)}
    pts = next(op for op in plain if isinstance(op, MountFs) and op.target == "/dev/pts")
    assert pts.data is not None and pts.data.endswith(",gid=5")


# --- the daemon's settings -------------------------------------------------------------


def test_daemon_userns_settings(tmp_path: Path) -> None:
    path = tmp_path / "nsvisor.toml"
    path.write_text(
        '[daemon]\nuserns = "auto"\nuserns_user = "remap"\nsubuid_file = "/srv/subuid"\n'
        'subgid_file = "/srv/subgid"\nuserns_size = 131072\n'
    )
    cfg = load_config(str(path))
    assert (cfg.userns, cfg.userns_user, cfg.subuid_file, cfg.subgid_file, cfg.userns_size) == (
        "auto",
        "remap",
        "/srv/subuid",
        "/srv/subgid",
        131072,
    )
    assert load_config(None).userns == "host"
    assert load_config(None, overrides={"userns": "auto"}).userns == "auto"
    path.write_text(
        '[daemon]\nuserns = "yes"\nuserns_user = "Bad User"\nsubuid_file = "rel"\nuserns_size = 10\n'
    )
    fields = [line.split(": ")[1] for line in check_config(str(path))]
    assert fields == [
        "[daemon] userns",
        "[daemon] userns_user",
        "[daemon] subuid_file",
        "[daemon] userns_size",
    ]
