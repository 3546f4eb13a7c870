"""seccomp in a real container: the default profile is in force, blocks what
Docker's blocks, lets ordinary work through, and follows the capability set;
"unconfined" and a custom Docker-format profile do what they say."""

from __future__ import annotations

import json

import pytest

from supervisor.runtime import seccomp

from .conftest import Launcher

pytestmark = pytest.mark.kernel


def _status(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_default_profile_is_in_force(launcher: Launcher) -> None:
    """`Seccomp: 2` (filter mode) in the workload's /proc/self/status, after
    no_new_privs, with one filter installed."""
    r = launcher.run("grep -E '^(Seccomp|Seccomp_filters|NoNewPrivs):' /proc/self/status")
    status = _status(r.stdout)
    assert status["Seccomp"] == "2", r.stdout
    assert status["NoNewPrivs"] == "1"
    assert status.get("Seccomp_filters", "1") == "1"


def test_unconfined_has_no_filter(launcher: Launcher) -> None:
    r = launcher.run("grep '^Seccomp:' /proc/self/status", seccomp="unconfined")
    assert r.stdout.split() == ["Seccomp:", "0"]


def test_ordinary_shell_work_runs_under_the_default_profile(launcher: Launcher) -> None:
    """A pipeline, a subshell, a background job, a pipe, a temp file, sleep, ps,
    a socket on loopback: all fine."""
    script = (
        "echo hi | tr a-z A-Z; (echo sub); sleep 0.01 & wait; "
        "mkdir -p /tmp/w && echo data > /tmp/w/f && cat /tmp/w/f && rm -r /tmp/w; "
        "ps -o comm | grep -c . >/dev/null && echo ps-ok; "
        "httpd -p 127.0.0.1:8081 -h /etc && wget -q -O- http://127.0.0.1:8081/hostname >/dev/null && echo http-ok"
    )
    r = launcher.run(script)
    assert r.stdout.splitlines() == ["HI", "sub", "data", "ps-ok", "http-ok"], r.stderr
    assert r.exit["exit_code"] == 0


def test_namespace_creation_is_refused_but_fork_works(launcher: Launcher) -> None:
    """unshare -U (a user namespace, the classic first step of an escape) gets
    EPERM from the clone/unshare filter; plain fork (sh spawning) still works."""
    r = launcher.run("unshare -U true; echo rc=$?; unshare -m true; echo rc=$?; sh -c 'echo child'")
    assert r.stdout.splitlines() == ["rc=1", "rc=1", "child"], (r.stdout, r.stderr)
    assert "Operation not permitted" in r.stderr


def test_namespace_creation_without_seccomp_needs_only_the_filter(launcher: Launcher) -> None:
    """The counter-check that makes the test above meaningful: unconfined,
    container root *can* create a user namespace (what seccomp prevents)."""
    r = launcher.run("unshare -U true; echo rc=$?", seccomp="unconfined")
    if r.stdout != "rc=0\n" and "Operation not permitted" in r.stderr:
        pytest.skip(
            "this kernel refuses user namespaces to a process without CAP_SYS_ADMIN even"
            " unconfined (e.g. Debian's kernel.unprivileged_userns_clone=0): no counter-check"
        )
    assert r.stdout == "rc=0\n", r.stderr


def test_cap_sys_admin_widens_the_profile(launcher: Launcher) -> None:
    """As Docker: with CAP_SYS_ADMIN, mount/unshare are allowed by the filter
    (the capability is the gate, not seccomp)."""
    caps = (*sorted(launcher.spec(["true"]).capabilities), "SYS_ADMIN")
    r = launcher.run("mount -t tmpfs x /mnt && echo mounted", capabilities=caps)
    assert r.stdout == "mounted\n", r.stderr


def test_custom_profile_denies_what_it_lists(launcher: Launcher) -> None:
    """A Docker-format profile that takes the default and denies mkdir/mkdirat
    with EACCES: mkdir fails with "Permission denied", the rest works."""
    profile = seccomp.default_profile()
    profile["syscalls"].append(
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
    )
    # mkdir/mkdirat are also in the allow group: a later rule for the same call
    # overrides in libseccomp only if it is more restrictive... so remove them.
    profile["syscalls"][0]["names"] = [
        n for n in profile["syscalls"][0]["names"] if n not in ("mkdir", "mkdirat")
    ]
    r = launcher.run("mkdir /tmp/x; echo rc=$?; echo still-ok", seccomp=json.dumps(profile))
    assert r.stdout == "rc=1\nstill-ok\n"
    assert "Permission denied" in r.stderr


def test_a_broken_custom_profile_fails_the_start_with_a_message(launcher: Launcher) -> None:
    from supervisor.runtime.zygote import LaunchError

    with pytest.raises((LaunchError, Exception)) as info:
        launcher.start(["true"], seccomp='{"syscalls": []}')
    assert "defaultAction" in str(info.value)


def test_a_prepared_program_is_the_one_installed(launcher: Launcher) -> None:
    """seccomp.prepare() (the daemon calls it before the zygote is forked)
    builds the program of a (setting, capability set) once; every workload
    forked afterwards installs those very bytes. To see that it is not built
    again, the prepared program of "default" is swapped for one that also
    denies mkdir: the workload's mkdir then fails, with Seccomp: 2."""
    from supervisor.runtime.caps import DEFAULT_CAPS

    key = seccomp._key(seccomp.DEFAULT, DEFAULT_CAPS)
    assert seccomp.prepare([(seccomp.DEFAULT, DEFAULT_CAPS)]) == []
    prepared = seccomp._PROGRAMS[key]
    assert prepared == seccomp.build_bpf(
        seccomp.compile_profile(seccomp.default_profile(), DEFAULT_CAPS)
    )
    profile = seccomp.default_profile()
    for rule in profile["syscalls"]:
        rule["names"] = [n for n in rule["names"] if n not in ("mkdir", "mkdirat")]
    seccomp._PROGRAMS[key] = seccomp.build_bpf(seccomp.compile_profile(profile, DEFAULT_CAPS))
    try:
        r = launcher.run(
            "mkdir /tmp/x; echo rc=$?; grep '^Seccomp:' /proc/self/status",
            capabilities=tuple(sorted(DEFAULT_CAPS)),
        )
    finally:
        seccomp._PROGRAMS[key] = prepared
    assert r.stdout.split() == ["rc=1", "Seccomp:", "2"], (r.stdout, r.stderr)
    r = launcher.run("mkdir /tmp/x; echo rc=$?", capabilities=tuple(sorted(DEFAULT_CAPS)))
    assert r.stdout.split() == ["rc=0"], (r.stdout, r.stderr)


def test_a_broken_profile_is_not_prepared_and_fails_the_start_as_before() -> None:
    """prepare() reports what it cannot build and caches nothing for it; the
    workload then builds it itself and reports the error at its step."""
    bad = json.dumps({"defaultAction": "SCMP_ACT_NOPE", "syscalls": []})
    problems = seccomp.prepare([(bad, ())])
    assert len(problems) == 1 and "SCMP_ACT_NOPE" in problems[0]
    assert seccomp._key(bad, ()) not in seccomp._PROGRAMS
