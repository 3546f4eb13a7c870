"""User namespace ranges for `--userns=auto`, the daemon's side.

The host ids come from /etc/subuid and /etc/subgid (shadow's format,
`NAME:START:COUNT`), from the entry of a dedicated user ("nsvisor" by
default). When the user has no entry, one is added in a stretch no other
entry uses (`ensure_range`, as useradd does for a new user). That range is
cut into slots of `size` ids (65536: every uid a distro rootfs may use); each
container with a user namespace gets its own slot (`RangeAllocator`), held
from `create` to `rm` and persisted in the container's state directory
(userns.json), so two containers never share host ids, and a container keeps
its ids across restarts and daemon restarts.

A rootfs shifted by a one-time chown (filesystems without idmapped mounts:
supervisor.runtime.userns) is owned by its slot's first uid; a container
created on it is given that very slot when it is free, so the chown is done
once per rootfs.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import structlog

from supervisor.daemon.statefile import read_json, write_json
from supervisor.errors import StateError
from supervisor.runtime.spec import IdMap

log = structlog.get_logger("nsvisor")

# useradd's defaults (login.defs SUB_UID_MIN): the first id a new range may use.
SUB_ID_MIN = 100_000
# A new entry for the dedicated user: this many slots of the container size.
DEFAULT_SLOTS = 1024


@dataclass(frozen=True)
class SubIdEntry:
    name: str
    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count


def parse_subid(text: str, path: str) -> list[SubIdEntry]:
    """The entries of a subuid/subgid file; malformed lines are an error
    naming the file and lines (nothing is allocated from a file we cannot
    read right)."""
    entries: list[SubIdEntry] = []
    problems: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit() or not parts[0]:
            problems.append(f"{path}:{lineno}: {stripped!r} is not NAME:START:COUNT")
            continue
        entries.append(SubIdEntry(parts[0], int(parts[1]), int(parts[2])))
    if problems:
        raise StateError("; ".join(problems) + " (fix or remove the line)")
    return entries


def _free_start(entries: list[SubIdEntry], count: int, align: int) -> int:
    """The lowest aligned start >= SUB_ID_MIN whose [start, start+count) meets no entry."""
    start = -(-SUB_ID_MIN // align) * align
    for e in sorted(entries, key=lambda e: e.start):
        if start + count <= e.start:
            break
        if e.end > start:
            start = -(-e.end // align) * align
    if start + count > 1 << 31:
        raise StateError(f"no free range of {count} ids below 2^31 for a new subordinate id entry")
    return start


def ensure_range(path: str, user: str, size: int, slots: int = DEFAULT_SLOTS) -> SubIdEntry:
    """The user's entry in a subuid/subgid file (the largest when it has
    several); added when missing, atomically, in a free stretch."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    entries = parse_subid(text, path)
    own = [e for e in entries if e.name == user]
    if own:
        return max(own, key=lambda e: e.count)
    count = size * slots
    entry = SubIdEntry(user, _free_start(entries, count, size), count)
    new_text = text + ("" if not text or text.endswith("\n") else "\n")
    new_text += f"{entry.name}:{entry.start}:{entry.count}\n"
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".nsvisor-subid-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new_text)
            f.flush()
            os.fsync(f.fileno())
        mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return entry


class RangeAllocator:
    """Slots of `size` ids in the uid and gid entries, one per container."""

    def __init__(self, uids: SubIdEntry, gids: SubIdEntry, size: int, source: str) -> None:
        self.uids = uids
        self.gids = gids
        self.size = size
        self.source = source  # for messages: where the ranges came from
        # Ids from 2^31 on are not used (supervisor.runtime.spec.IdMap).
        usable = min(uids.count, gids.count, (1 << 31) - uids.start, (1 << 31) - gids.start)
        self.slots = max(usable, 0) // size
        if self.slots < 1:
            raise StateError(
                f"{source}: {uids.count} uids / {gids.count} gids hold no user namespace of"
                f" {size} ids; give the user a larger range or lower userns_size"
            )
        self._owner: dict[int, str] = {}  # slot -> container
        self._slot: dict[str, int] = {}  # container -> slot

    def idmap(self, slot: int) -> IdMap:
        return IdMap(
            uid=self.uids.start + slot * self.size,
            gid=self.gids.start + slot * self.size,
            size=self.size,
        )

    def slot_of_uid(self, uid: int) -> int | None:
        """The slot whose first uid this is (a rootfs shifted for it), or None."""
        offset = uid - self.uids.start
        if offset < 0 or offset % self.size or offset // self.size >= self.slots:
            return None
        return offset // self.size

    def owner(self, slot: int) -> str | None:
        return self._owner.get(slot)

    def claim(self, name: str, idmap: IdMap) -> None:
        """At daemon start: a container's persisted range is its own again."""
        slot = self.slot_of_uid(idmap.uid)
        if slot is None or self.idmap(slot) != idmap:
            raise StateError(
                f"container {name}: its user namespace (uid {idmap.uid}, gid {idmap.gid},"
                f" {idmap.size} ids) is not a slot of {self.source}; remove and re-create it"
            )
        holder = self._owner.get(slot)
        if holder is not None and holder != name:
            raise StateError(
                f"container {name}: its user namespace range is also recorded for {holder}"
            )
        self._owner[slot] = name
        self._slot[name] = slot

    def allocate(self, name: str, prefer_uid: int | None = None) -> IdMap:
        if name in self._slot:
            return self.idmap(self._slot[name])
        slot: int | None = None
        if prefer_uid is not None:
            slot = self.slot_of_uid(prefer_uid)
            if slot is not None and slot in self._owner:
                raise StateError(
                    f"container {name}: its rootfs is owned by uid {prefer_uid}, shifted for"
                    f" container {self._owner[slot]}'s user namespace; on a filesystem without"
                    " idmapped mounts each --userns=auto container needs its own rootfs copy"
                )
        if slot is None:
            slot = next((s for s in range(self.slots) if s not in self._owner), None)
        if slot is None:
            raise StateError(
                f"no free user namespace range: all {self.slots} ranges of {self.size} ids"
                f" in {self.source} are in use; remove containers or give the user a larger range"
            )
        self._owner[slot] = name
        self._slot[name] = slot
        return self.idmap(slot)

    def release(self, name: str) -> None:
        slot = self._slot.pop(name, None)
        if slot is not None:
            self._owner.pop(slot, None)

    def in_use(self) -> dict[str, IdMap]:
        return {name: self.idmap(slot) for name, slot in self._slot.items()}


IDMAP_FILE = "userns.json"


class UsernsPolicy:
    """The daemon's user namespace settings ([daemon] userns, userns_user,
    subuid_file, subgid_file, userns_size) and its allocator, made on first
    use: a daemon whose containers all run with userns=host never reads (or
    writes) the subordinate id files."""

    def __init__(
        self,
        default: str = "host",
        user: str = "nsvisor",
        subuid_file: str = "/etc/subuid",
        subgid_file: str = "/etc/subgid",
        size: int = 65536,
    ) -> None:
        self.default = default
        self.user = user
        self.subuid_file = subuid_file
        self.subgid_file = subgid_file
        self.size = size
        self._allocator: RangeAllocator | None = None

    def wants(self, mode: str) -> bool:
        """mode: a container's userns setting ("" = the daemon's default)."""
        return (mode or self.default) == "auto"

    @property
    def allocator(self) -> RangeAllocator:
        if self._allocator is None:
            uids = ensure_range(self.subuid_file, self.user, self.size)
            gids = ensure_range(self.subgid_file, self.user, self.size)
            self._allocator = RangeAllocator(
                uids,
                gids,
                self.size,
                f"{self.subuid_file}/{self.subgid_file} entries of user {self.user}",
            )
        return self._allocator

    def allocate(self, name: str, rootfs: str) -> IdMap:
        """A range for a new container; the one its rootfs was shifted for
        when that rootfs is owned by a slot's first uid."""
        try:
            owner: int | None = os.stat(rootfs).st_uid
        except OSError:
            owner = None
        allocator = self.allocator
        prefer = owner if owner and allocator.slot_of_uid(owner) is not None else None
        return allocator.allocate(name, prefer)

    def release(self, name: str) -> None:
        if self._allocator is not None:
            self._allocator.release(name)

    @staticmethod
    def save(cdir: str, idmap: IdMap) -> None:
        write_json(
            os.path.join(cdir, IDMAP_FILE), {"uid": idmap.uid, "gid": idmap.gid, "size": idmap.size}
        )

    def load(self, name: str, cdir: str) -> IdMap | None:
        """A container's persisted range (claimed again), or None (userns=host)."""
        path = os.path.join(cdir, IDMAP_FILE)
        if not os.path.exists(path):
            return None
        raw = read_json(path)
        idmap = IdMap(uid=int(raw["uid"]), gid=int(raw["gid"]), size=int(raw["size"]))
        try:
            self.allocator.claim(name, idmap)
        except StateError as exc:
            # Its processes may be running with that mapping: keep it (an
            # unknown container would be worse); the operator is told.
            log.error("userns.range_not_claimed", container=name, error=str(exc))
        return idmap
