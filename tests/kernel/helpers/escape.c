/* Escape attempts that busybox cannot make, one per sub-command. Compiled
 * static on the host at test time (tests/kernel/test_escape.py) into a copy
 * of the test rootfs. Prints one line, "blocked: <what> (<errno text>)" or
 * "ESCAPED: <what>", and exits 0 when blocked, 1 when the attempt worked.
 * Only ever acts on the container's own view: nothing here touches the host
 * unless the isolation is broken, and then only reads. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int blocked(const char *what) {
    printf("blocked: %s (%s)\n", what, strerror(errno));
    return 0;
}

static int escaped(const char *what) {
    printf("ESCAPED: %s\n", what);
    return 1;
}

/* The classic chroot escape: chroot into a subdirectory while keeping the
 * cwd outside it, climb with "..", chroot("."). After pivot_root + detach the
 * top is still the container's root; argv[2] is a path that exists only on the
 * host (the test's marker file). */
static int chroot_escape(const char *marker) {
    mkdir("/tmp/jail", 0700);
    if (chroot("/tmp/jail") != 0) return blocked("chroot");
    for (int i = 0; i < 64; i++) chdir("..");
    if (chroot(".") != 0) return blocked("chroot(.)");
    if (access(marker, F_OK) == 0) return escaped("host marker visible after chroot climb");
    errno = ENOENT;
    return blocked("chroot climb stays in the container root");
}

static int userns_mount(void) {
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) return blocked("unshare(NEWUSER|NEWNS)");
    if (mount("none", "/mnt", "tmpfs", 0, NULL) != 0) return blocked("mount in the new userns");
    return escaped("mounted tmpfs inside a new user namespace");
}

static int clone_userns(void) {
    pid_t pid = (pid_t)syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (pid < 0) return blocked("clone(CLONE_NEWUSER)");
    if (pid == 0) _exit(0);
    waitpid(pid, NULL, 0);
    return escaped("clone(CLONE_NEWUSER) created a user namespace");
}

static int ptrace_init(void) {
    if (ptrace(PTRACE_ATTACH, 1, 0, 0) != 0) return blocked("ptrace(ATTACH, 1)");
    ptrace(PTRACE_DETACH, 1, 0, 0);
    return escaped("attached to PID 1");
}

static int module_load(void) {
    int fd = open("/tmp/empty.ko", O_RDONLY | O_CREAT, 0600);
    if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != ENOEXEC && errno != EINVAL)
        return blocked("finit_module");
    if (errno == ENOEXEC || errno == EINVAL) return escaped("finit_module reached the module loader");
    return escaped("finit_module");
}

static int settime(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (clock_settime(CLOCK_REALTIME, &ts) != 0) return blocked("clock_settime");
    return escaped("clock_settime");
}

static int open_by_handle(void) {
    /* "shocker": a file handle guessed for the host's root inode */
    struct { unsigned int bytes; int type; unsigned char f[8]; } h = {8, 1, {2, 0, 0, 0, 0, 0, 0, 0}};
    int fd = (int)syscall(SYS_open_by_handle_at, AT_FDCWD, &h, O_RDONLY);
    if (fd < 0 && (errno == EPERM || errno == ENOSYS)) return blocked("open_by_handle_at");
    if (fd < 0) return blocked("open_by_handle_at (other error)");
    return escaped("open_by_handle_at");
}

static int bpf_call(void) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    if (syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof(attr)) < 0) return blocked("bpf(MAP_CREATE)");
    return escaped("bpf map created");
}

static int perf_open(void) {
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.size = sizeof(attr);
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_CPU_CLOCK;
    if (syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0) < 0) return blocked("perf_event_open");
    return escaped("perf_event_open");
}

static int keyctl_call(void) {
    if (syscall(SYS_add_key, "user", "nsvisor-test", "x", 1, -4 /* session */) < 0)
        return blocked("add_key");
    return escaped("add_key");
}

static int setns_call(void) {
    int fd = open("/proc/1/ns/mnt", O_RDONLY);
    if (fd < 0) return blocked("open /proc/1/ns/mnt");
    if (setns(fd, 0) != 0) return blocked("setns");
    return escaped("setns into PID 1's mount namespace");
}

/* Docker's profile lets personality() through only for a few values (the
 * query 0xffffffff, PER_LINUX, PER_LINUX32, UNAME26 and their pairs);
 * ADDR_NO_RANDOMIZE would switch off ASLR for what the process execs. */
static int personality_call(void) {
    if (personality(0xffffffff) == -1) return blocked("personality query (should be allowed)");
    if (personality(ADDR_NO_RANDOMIZE) == -1) return blocked("personality(ADDR_NO_RANDOMIZE)");
    return escaped("personality(ADDR_NO_RANDOMIZE)");
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *c = argv[1];
    if (!strcmp(c, "chroot")) return chroot_escape(argc > 2 ? argv[2] : "/nonexistent");
    if (!strcmp(c, "userns-mount")) return userns_mount();
    if (!strcmp(c, "clone-userns")) return clone_userns();
    if (!strcmp(c, "ptrace")) return ptrace_init();
    if (!strcmp(c, "module")) return module_load();
    if (!strcmp(c, "settime")) return settime();
    if (!strcmp(c, "open-by-handle")) return open_by_handle();
    if (!strcmp(c, "bpf")) return bpf_call();
    if (!strcmp(c, "perf")) return perf_open();
    if (!strcmp(c, "keyctl")) return keyctl_call();
    if (!strcmp(c, "setns")) return setns_call();
    if (!strcmp(c, "personality")) return personality_call();
    fprintf(stderr, "unknown attempt %s\n", c);
    return 2;
}
