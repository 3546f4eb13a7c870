/* nsvisor: the command-line client's front end (installed by deploy/setup.sh
 * as .venv/bin/nsvisor). It runs no command itself: it hands argv, the
 * working directory, the environment, the umask and its stdin/stdout/stderr
 * to the daemon's command server (supervisor/cliserver.py, on
 * "<control socket>.cli"), which runs the Python CLI in a forked worker, and
 * exits with the command's exit code. What a terminal or a supervisor sends
 * this process (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH, SIGUSR1/2) goes on
 * to the worker.
 *
 * Why: a CPython start is ~20 ms here, two thirds of a whole `runc run`.
 * Where there is no command server (no daemon running, `nsvisor daemon`
 * itself, a daemon without one) the same command runs through Python:
 * <this binary's directory>/python -m supervisor ARGS. Same behaviour, only
 * slower.
 *
 * The control socket is found as the CLI finds it: --socket PATH (or
 * --socket=PATH) before the command, else $NSVISOR_SOCKET, else
 * /run/nsvisor/nsvisor.sock.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/nsvisor/nsvisor.sock"
#define MAGIC "NSVCLI1"

extern char **environ;

static volatile sig_atomic_t worker = 0;

static void forward(int sig)
{
    if (worker > 0)
        kill((pid_t)worker, sig);
}

static void run_python(char **argv)
{
    char exe[PATH_MAX], python[PATH_MAX + 16];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        perror("nsvisor: /proc/self/exe");
        exit(127);
    }
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    *slash = '\0';
    snprintf(python, sizeof python, "%s/python", exe);
    int argc = 0;
    while (argv[argc])
        argc++;
    char **args = calloc((size_t)argc + 4, sizeof *args);
    if (!args)
        exit(127);
    args[0] = python;
    args[1] = "-m";
    args[2] = "supervisor";
    for (int i = 1; i < argc; i++)
        args[i + 2] = argv[i];
    execv(python, args);
    fprintf(stderr, "nsvisor: cannot run %s: %s\n", python, strerror(errno));
    exit(127);
}

/* The command (first word after the global options) and the control socket,
 * as supervisor.cli._command_in reads them. */
static const char *command_of(char **argv, const char **sock)
{
    for (int i = 1; argv[i]; i++) {
        if (!strcmp(argv[i], "--socket")) {
            if (argv[i + 1])
                *sock = argv[++i];
        } else if (!strncmp(argv[i], "--socket=", 9)) {
            *sock = argv[i] + 9;
        } else if (argv[i][0] == '-') {
            return NULL;
        } else {
            return argv[i];
        }
    }
    return NULL;
}

struct buf {
    char *p;
    size_t len, cap;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            exit(127);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void field(struct buf *b, const char *s) { put(b, s, strlen(s) + 1); }

static void field_num(struct buf *b, const char *fmt, long v)
{
    char tmp[32];
    snprintf(tmp, sizeof tmp, fmt, v);
    field(b, tmp);
}

int main(int argc, char **argv)
{
    (void)argc;
    const char *sock = NULL;
    const char *cmd = command_of(argv, &sock);
    if (!cmd || !strcmp(cmd, "daemon"))
        run_python(argv); /* help, usage errors and the daemon: Python itself */
    if (!sock)
        sock = getenv("NSVISOR_SOCKET");
    if (!sock || !*sock)
        sock = DEFAULT_SOCKET;

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (snprintf(addr.sun_path, sizeof addr.sun_path, "%s.cli", sock) >= (int)sizeof addr.sun_path)
        run_python(argv);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        run_python(argv); /* no command server: the slow way */

    struct buf req = {0};
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        run_python(argv);
    mode_t mask = umask(0);
    umask(mask);
    put(&req, MAGIC, sizeof MAGIC); /* with its NUL */
    field(&req, cwd);
    field_num(&req, "%lo", (long)mask);
    int n = 0;
    while (argv[n + 1])
        n++;
    field_num(&req, "%ld", n);
    for (int i = 1; i <= n; i++)
        field(&req, argv[i]);
    int envc = 0;
    while (environ[envc])
        envc++;
    field_num(&req, "%ld", envc);
    for (int i = 0; i < envc; i++)
        field(&req, environ[i]);

    int stdio[3] = {0, 1, 2};
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof stdio)];
    } u;
    memset(&u, 0, sizeof u);
    struct iovec iov = {req.p, req.len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.space,
                         .msg_controllen = sizeof u.space};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof stdio);
    memcpy(CMSG_DATA(c), stdio, sizeof stdio);
    if (sendmsg(fd, &msg, MSG_NOSIGNAL) != (ssize_t)req.len)
        run_python(argv); /* nothing has run yet */
    free(req.p);

    struct sigaction sa = {.sa_handler = forward, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        sigaction(sigs[i], &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* "pid N\n" then "exit N\n" */
    char line[64];
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, line + len, sizeof line - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
        line[len] = '\0';
        char *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = '\0';
            long v;
            if (sscanf(line, "pid %ld", &v) == 1)
                worker = (sig_atomic_t)v;
            else if (sscanf(line, "exit %ld", &v) == 1)
                return (int)(v & 0xff);
            len -= (size_t)(nl + 1 - line);
            memmove(line, nl + 1, len + 1);
        }
        if (len >= sizeof line - 1)
            len = 0; /* garbage: drop it */
    }
    fprintf(stderr, "nsvisor: the command server ended the command without an exit status\n");
    return 255;
}
