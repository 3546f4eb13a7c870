/* nsvisor-monitor: the container's PID 1 (tini's job) and its log/exit keeper
 * (conmon's job), one process per container, in C because its memory counts
 * (a Python process forked from the daemon dirties ~1.3 MiB by just polling).
 *
 * Started by supervisor/runtime/monitor.py: the container's first process
 * (Python, cloned by the zygote) forks the workload, which waits on the
 * sync pipe, then execve()s this binary in place: same pid, PID 1 of the
 * container, in the host mount namespace. Everything is handed over as fds:
 *
 *   fd 3         parameters, NUL-separated key=value (read to EOF, closed)
 *   launch=N     the SOCK_SEQPACKET launch socket ("started"/"error" events)
 *   out=N err=N  read ends of the workload's stdout/stderr pipes
 *   exec=N       the workload's exec-result pipe: "P<host pid>\n", then
 *                "E<code> <message>" on failure; EOF at execve
 *   sync=N       write end of the gate: one byte lets the workload execve (it
 *                sets the container up meanwhile); it exits (125) on EOF
 *   console=N    the socketpair end the pty master arrives on (tty), or -1
 *   stdin=N      write end of the workload's stdin pipe (stdin, no tty), or -1
 *   workload=PID, private_pidns=0|1, tty=0|1, stdin_open=0|1,
 *   log=PATH, exit=PATH, attach=PATH (optional), oom=PATH (optional),
 *   log_max_size=BYTES (0: no rotation), log_max_files=N, grace=SECONDS
 *
 * The behaviour (events, log format, attach protocol, exit file) is the one
 * documented in supervisor/runtime/monitor.py and docs/DESIGN.md. No
 * threads, no dependencies beyond libc: one poll loop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* Docker's json-file driver splits lines longer than this. */
#define MAX_LINE (16 * 1024)
#define READ_CHUNK 65536
/* After every process is gone, how long to wait for EOF on the output pipes. */
#define DRAIN_TIMEOUT_S 1.0
/* After SIGKILL, how long to wait for the last processes. */
#define KILL_TIMEOUT_S 10.0
/* attach: a client this far behind is dropped; the last REPLAY_BYTES of a
 * tty's output go to a new client; beyond INPUT_BUFFER of unwritten input
 * the clients are not read (backpressure). */
#define CLIENT_BUFFER (1 << 20)
#define REPLAY_BYTES (64 * 1024)
#define INPUT_BUFFER (256 * 1024)
#define FRAME_HDR 5

/* --- small helpers ------------------------------------------------------- */

struct buf {
    char *p;
    size_t len, cap;
};

static void buf_reserve(struct buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        _exit(255); /* out of memory in PID 1: nothing better to do */
    b->p = p;
    b->cap = cap;
}

static void buf_add(struct buf *b, const void *data, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->p, b->p + n, b->len - n);
        b->len -= n;
    }
    /* Give back what a burst made big (a slow client's megabyte). */
    if (b->len == 0 && b->cap > 65536) {
        free(b->p);
        b->p = NULL;
        b->cap = 0;
    }
}

static void buf_free(struct buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static double now_real(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* --- JSON strings as Python's json.dumps(bytes.decode(errors="replace")) --
 * UTF-8 decoded with one U+FFFD per maximal invalid subpart (Python's rule),
 * then escaped with ensure_ascii: \" \\ \n \r \t \b \f, anything else
 * outside ' '..'~' as \uXXXX (surrogate pairs beyond the BMP). */

static void json_u(struct buf *out, unsigned cp)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[6] = {'\\', 'u', hex[(cp >> 12) & 15], hex[(cp >> 8) & 15], hex[(cp >> 4) & 15],
                   hex[cp & 15]};
    buf_add(out, tmp, 6);
}

static void json_cp(struct buf *out, unsigned cp)
{
    switch (cp) {
    case '"': buf_add(out, "\\\"", 2); return;
    case '\\': buf_add(out, "\\\\", 2); return;
    case '\n': buf_add(out, "\\n", 2); return;
    case '\r': buf_add(out, "\\r", 2); return;
    case '\t': buf_add(out, "\\t", 2); return;
    case '\b': buf_add(out, "\\b", 2); return;
    case '\f': buf_add(out, "\\f", 2); return;
    }
    if (cp >= 0x20 && cp <= 0x7e) {
        char c = (char)cp;
        buf_add(out, &c, 1);
    } else if (cp >= 0x10000) {
        cp -= 0x10000;
        json_u(out, 0xd800 | (cp >> 10));
        json_u(out, 0xdc00 | (cp & 0x3ff));
    } else {
        json_u(out, cp);
    }
}

static void json_string(struct buf *out, const unsigned char *s, size_t n)
{
    buf_reserve(out, n + 2);
    buf_add(out, "\"", 1);
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            json_cp(out, c);
            i++;
            continue;
        }
        size_t need;
        unsigned lo = 0x80, hi = 0xbf, cp;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            cp = c & 0x0f;
            if (c == 0xe0)
                lo = 0xa0;
            else if (c == 0xed)
                hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            cp = c & 0x07;
            if (c == 0xf0)
                lo = 0x90;
            else if (c == 0xf4)
                hi = 0x8f;
        } else {
            json_u(out, 0xfffd);
            i++;
            continue;
        }
        size_t k = 1;
        for (; k <= need; k++) {
            if (i + k >= n)
                break;
            unsigned b = s[i + k];
            unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xbf;
            if (b < l || b > h)
                break;
            cp = (cp << 6) | (b & 0x3f);
        }
        if (k <= need) { /* invalid or truncated: one U+FFFD for the maximal subpart */
            json_u(out, 0xfffd);
            i += k;
            continue;
        }
        json_cp(out, cp);
        i += need + 1;
    }
    buf_add(out, "\"", 1);
}

static void json_double(struct buf *out, double v)
{
    /* Python's repr of a float round-trips; %.17g does too (json.loads reads it). */
    char tmp[40];
    int n = snprintf(tmp, sizeof tmp, "%.17g", v);
    if (!strpbrk(tmp, ".en"))
        n += snprintf(tmp + n, sizeof tmp - (size_t)n, ".0");
    buf_add(out, tmp, (size_t)n);
}

static void json_raw(struct buf *out, const char *s) { buf_add(out, s, strlen(s)); }

/* --- parameters ---------------------------------------------------------- */

static struct {
    int launch, out, err, exec, sync, console, stdin_w;
    pid_t workload;
    int private_pidns, tty, stdin_open;
    const char *log, *exit, *attach, *oom;
    long long log_max_size;
    int log_max_files;
    double grace;
} P = {.launch = -1, .out = -1, .err = -1, .exec = -1, .sync = -1, .console = -1,
       .stdin_w = -1, .log_max_files = 1, .grace = 2.0};

static void send_event(const char *json_line, size_t n)
{
    if (P.launch >= 0)
        send(P.launch, json_line, n, MSG_NOSIGNAL); /* the launcher may be gone */
}

static void send_error(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct buf b = {0};
    json_raw(&b, "{\"event\": \"error\", \"message\": ");
    json_string(&b, (const unsigned char *)msg, strlen(msg));
    json_raw(&b, "}\n");
    send_event(b.p, b.len);
    buf_free(&b);
}

/* Set-up failed before the loop: report like the Python monitor did
 * ("monitor failed: ...") and exit 255. The workload, at the gate before its
 * execve, sees EOF on the sync pipe and exits. */
static void die(const char *what)
{
    send_error("monitor failed: %s: %s", what, strerror(errno));
    _exit(255);
}

static void read_params(void)
{
    static char raw[1 << 16];
    size_t len = 0;
    for (;;) {
        ssize_t r = read(3, raw + len, sizeof raw - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
        if (len == sizeof raw - 1)
            break;
    }
    close(3);
    raw[len] = 0;
    for (char *p = raw; p < raw + len; p += strlen(p) + 1) {
        char *eq = strchr(p, '=');
        if (!eq)
            continue;
        *eq = 0;
        const char *k = p, *v = eq + 1;
        long n = strtol(v, NULL, 10);
        if (!strcmp(k, "launch")) P.launch = (int)n;
        else if (!strcmp(k, "out")) P.out = (int)n;
        else if (!strcmp(k, "err")) P.err = (int)n;
        else if (!strcmp(k, "exec")) P.exec = (int)n;
        else if (!strcmp(k, "sync")) P.sync = (int)n;
        else if (!strcmp(k, "console")) P.console = (int)n;
        else if (!strcmp(k, "stdin")) P.stdin_w = (int)n;
        else if (!strcmp(k, "workload")) P.workload = (pid_t)n;
        else if (!strcmp(k, "private_pidns")) P.private_pidns = (int)n;
        else if (!strcmp(k, "tty")) P.tty = (int)n;
        else if (!strcmp(k, "stdin_open")) P.stdin_open = (int)n;
        else if (!strcmp(k, "log")) P.log = v;
        else if (!strcmp(k, "exit")) P.exit = v;
        else if (!strcmp(k, "attach")) P.attach = *v ? v : NULL;
        else if (!strcmp(k, "oom")) P.oom = *v ? v : NULL;
        else if (!strcmp(k, "log_max_size")) P.log_max_size = strtoll(v, NULL, 10);
        else if (!strcmp(k, "log_max_files")) P.log_max_files = n < 1 ? 1 : (int)n;
        else if (!strcmp(k, "grace")) P.grace = strtod(v, NULL);
        *eq = '=';
        p = eq; /* strlen from '=' reaches the same NUL */
    }
}

/* --- the log (Docker json-file lines, rotation by size) ------------------- */

static struct {
    int fd;
    long long size;
    unsigned char pending[2][MAX_LINE]; /* stdout, stderr: the unfinished line */
    size_t plen[2];
    struct buf line;       /* the JSON being written */
} L = {.fd = -1};

static const char *const STREAM[2] = {"stdout", "stderr"};

static int open_log(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
}

static void rotated_name(char *dst, size_t n, int index)
{
    if (index == 0)
        snprintf(dst, n, "%s", P.log);
    else
        snprintf(dst, n, "%s.%d", P.log, index);
}

/* Shift log.(n) -> log.(n+1) and log -> log.1, keeping max_files files (the
 * current one included; with 1 the old file is dropped). Renames: a reader
 * holding the old file reads it to its end. -1 on an error other than a
 * missing file (the caller keeps appending to the old file). */
static int rotate_files(void)
{
    char a[PATH_MAX + 16], b[PATH_MAX + 16];
    rotated_name(a, sizeof a, P.log_max_files > 1 ? P.log_max_files - 1 : 0);
    if (unlink(a) < 0 && errno != ENOENT)
        return -1;
    for (int i = P.log_max_files - 2; i >= 0; i--) {
        rotated_name(a, sizeof a, i);
        rotated_name(b, sizeof b, i + 1);
        if (rename(a, b) < 0 && errno != ENOENT)
            return -1;
    }
    return 0;
}

static void log_emit(int stream, const unsigned char *chunk, size_t n)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[64];
    size_t w = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + w, sizeof when - w, ".%09ldZ", ts.tv_nsec);

    struct buf *out = &L.line;
    out->len = 0;
    json_raw(out, "{\"log\":");
    json_string(out, chunk, n);
    json_raw(out, ",\"stream\":\"");
    json_raw(out, STREAM[stream]);
    json_raw(out, "\",\"time\":\"");
    json_raw(out, when);
    json_raw(out, "\"}\n");

    if (P.log_max_size > 0 && L.size && L.size + (long long)out->len > P.log_max_size) {
        if (rotate_files() == 0) {
            int fd = open_log(P.log);
            if (fd >= 0) {
                close(L.fd);
                L.fd = fd;
                L.size = 0;
            }
        }
    }
    const char *p = out->p;
    size_t left = out->len;
    while (left) { /* a full disk must not kill PID 1: the line is lost */
        ssize_t r = write(L.fd, p, left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        L.size += r;
        p += r;
        left -= (size_t)r;
    }
    if (out->cap > 4 * MAX_LINE) /* a line of escapes: give the buffer back */
        buf_free(out);
}

static void log_feed(int stream, const unsigned char *data, size_t n)
{
    /* As Python's: buf = pending + data; emit every line (newline within the
     * first MAX_LINE bytes) and every MAX_LINE-byte piece; keep the rest. */
    unsigned char *pend = L.pending[stream];
    size_t *plen = &L.plen[stream];
    while (n) {
        size_t room = MAX_LINE - *plen;
        size_t look = n < room ? n : room;
        const unsigned char *nl = memchr(data, '\n', look);
        if (nl) {
            size_t k = (size_t)(nl - data) + 1;
            if (*plen) {
                memcpy(pend + *plen, data, k);
                log_emit(stream, pend, *plen + k);
                *plen = 0;
            } else {
                log_emit(stream, data, k);
            }
            data += k;
            n -= k;
        } else if (n >= room) {
            if (*plen) {
                memcpy(pend + *plen, data, room);
                log_emit(stream, pend, MAX_LINE);
                *plen = 0;
            } else {
                log_emit(stream, data, MAX_LINE);
            }
            data += room;
            n -= room;
        } else {
            memcpy(pend + *plen, data, n);
            *plen += n;
            n = 0;
        }
    }
}

static void log_flush(int stream)
{
    if (L.plen[stream]) {
        log_emit(stream, L.pending[stream], L.plen[stream]);
        L.plen[stream] = 0;
    }
}

/* --- attach (frames: 1 byte type, 4 bytes big-endian length, payload) ----- */

struct client {
    int fd; /* -1: dropped */
    struct buf in, out;
};

static struct {
    int listener;
    struct buf replay;
    struct client *c;
    size_t n, cap;
} A = {.listener = -1};

static void frame_hdr(char hdr[FRAME_HDR], char kind, size_t len)
{
    hdr[0] = kind;
    hdr[1] = (char)(len >> 24);
    hdr[2] = (char)(len >> 16);
    hdr[3] = (char)(len >> 8);
    hdr[4] = (char)len;
}

static void attach_listen(void)
{
    /* Bound by its basename from its directory: the absolute path can be
     * longer than sun_path (deep state directories). 0600. */
    const char *slash = strrchr(P.attach, '/');
    const char *base = slash ? slash + 1 : P.attach;
    A.listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (A.listener < 0)
        die("attach socket");
    if (slash) {
        char dir[PATH_MAX];
        size_t dl = (size_t)(slash - P.attach);
        if (dl >= sizeof dir)
            dl = sizeof dir - 1;
        memcpy(dir, P.attach, dl);
        dir[dl] = 0;
        if (chdir(dl ? dir : "/") < 0)
            die("attach socket directory");
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(base) >= sizeof sa.sun_path) {
        errno = ENAMETOOLONG;
        die("attach socket name");
    }
    strcpy(sa.sun_path, base);
    unlink(base);
    mode_t old = umask(0177);
    int r = bind(A.listener, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (r < 0)
        die("binding the attach socket");
    if (chdir("/") < 0 || listen(A.listener, 16) < 0)
        die("listening on the attach socket");
}

static void client_drop(struct client *c)
{
    if (c->fd < 0)
        return;
    close(c->fd);
    c->fd = -1;
    buf_free(&c->in);
    buf_free(&c->out);
}

static void client_flush(struct client *c)
{
    while (c->fd >= 0 && c->out.len) {
        ssize_t s = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (s < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR)
                continue;
            client_drop(c);
            return;
        }
        buf_consume(&c->out, (size_t)s);
    }
}

static void attach_accept(void)
{
    int fd = accept4(A.listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    size_t i = 0;
    while (i < A.n && A.c[i].fd >= 0)
        i++;
    if (i == A.n) {
        if (A.n == A.cap) {
            size_t cap = A.cap ? A.cap * 2 : 4;
            struct client *c = realloc(A.c, cap * sizeof *c);
            if (!c) {
                close(fd);
                return;
            }
            A.c = c;
            A.cap = cap;
        }
        A.n++;
    }
    struct client *c = &A.c[i];
    memset(c, 0, sizeof *c);
    c->fd = fd;
    if (P.tty && A.replay.len) {
        char hdr[FRAME_HDR];
        frame_hdr(hdr, '1', A.replay.len);
        buf_add(&c->out, hdr, FRAME_HDR);
        buf_add(&c->out, A.replay.p, A.replay.len);
    }
    client_flush(c);
}

static void attach_broadcast(int stream, const char *data, size_t n)
{
    if (A.listener < 0)
        return;
    if (P.tty) {
        buf_add(&A.replay, data, n);
        if (A.replay.len > REPLAY_BYTES)
            buf_consume(&A.replay, A.replay.len - REPLAY_BYTES);
    }
    char hdr[FRAME_HDR];
    frame_hdr(hdr, stream == 0 ? '1' : '2', n);
    for (size_t i = 0; i < A.n; i++) {
        struct client *c = &A.c[i];
        if (c->fd < 0)
            continue;
        buf_add(&c->out, hdr, FRAME_HDR);
        buf_add(&c->out, data, n);
        if (c->out.len > CLIENT_BUFFER)
            client_drop(c); /* too slow: never let it hold the others up */
        else
            client_flush(c);
    }
}

/* At exit: the last output to every client (1 s each at most), then EOF. */
static void attach_close(void)
{
    if (A.listener < 0)
        return;
    for (size_t i = 0; i < A.n; i++) {
        struct client *c = &A.c[i];
        double deadline = now_mono() + 1.0;
        while (c->fd >= 0 && c->out.len) {
            client_flush(c);
            double left = deadline - now_mono();
            if (c->fd < 0 || !c->out.len || left <= 0)
                break;
            struct pollfd pf = {.fd = c->fd, .events = POLLOUT};
            poll(&pf, 1, (int)ceil(left * 1000));
        }
        client_drop(c);
    }
    close(A.listener);
    unlink(P.attach);
}

/* --- the monitor state ---------------------------------------------------- */

enum { S_OUT, S_ERR, S_MASTER, NSTREAMS };
static struct {
    int fd[NSTREAMS];   /* -1: closed */
    int master;         /* the pty master while open (also S_MASTER's fd) */
    int stdin_w;
    int status_set, status;
    struct buf input;
    int input_eof;
} M = {.fd = {-1, -1, -1}, .master = -1, .stdin_w = -1};

static const int STREAM_OF[NSTREAMS] = {0, 1, 0}; /* a pty is stdout */

static int input_target(void)
{
    if (P.tty)
        return P.stdin_open ? M.master : -1;
    return M.stdin_w;
}

static sigset_t pipe_set;

static void write_input(void)
{
    int target = input_target();
    if (target < 0 || !M.input.len)
        return;
    ssize_t w = write(target, M.input.p, M.input.len);
    if (w >= 0) {
        buf_consume(&M.input, (size_t)w);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        /* EPIPE/EIO: nobody reads the input any more */
        buf_free(&M.input);
        if (target == M.stdin_w) {
            close(M.stdin_w);
            M.stdin_w = -1;
        }
    }
    /* A write to a pipe without a reader raises SIGPIPE (blocked here, as
     * every forwarded signal): consume it, it is not for the workload. */
    sigset_t pending;
    if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE)) {
        struct timespec zero = {0, 0};
        sigtimedwait(&pipe_set, NULL, &zero);
    }
}

static void client_frame(char kind, const unsigned char *payload, size_t n)
{
    if (kind == 'i') {
        if (input_target() >= 0 && !M.input_eof) {
            buf_add(&M.input, payload, n);
            write_input();
        }
    } else if (kind == 'r' && M.master >= 0 && n == 4) {
        struct winsize ws = {.ws_row = (unsigned short)(payload[0] << 8 | payload[1]),
                             .ws_col = (unsigned short)(payload[2] << 8 | payload[3])};
        ioctl(M.master, TIOCSWINSZ, &ws);
    } else if (kind == 'e' && !P.tty) {
        M.input_eof = 1;
    }
}

static void client_receive(struct client *c)
{
    char tmp[READ_CHUNK];
    ssize_t r = recv(c->fd, tmp, sizeof tmp, MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (r <= 0) {
        client_drop(c);
        return;
    }
    buf_add(&c->in, tmp, (size_t)r);
    size_t off = 0;
    while (c->fd >= 0 && c->in.len - off >= FRAME_HDR) {
        const unsigned char *h = (const unsigned char *)c->in.p + off;
        size_t len = (size_t)h[1] << 24 | (size_t)h[2] << 16 | (size_t)h[3] << 8 | h[4];
        if (c->in.len - off - FRAME_HDR < len)
            break;
        char kind = (char)h[0];
        /* client_frame never touches c->in */
        client_frame(kind, h + FRAME_HDR, len);
        off += FRAME_HDR + len;
    }
    if (c->fd >= 0)
        buf_consume(&c->in, off);
}

/* --- processes -------------------------------------------------------------- */

static int reap(void) /* 1 when no child is left */
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if (pid == 0)
            return 0;
        if (pid == P.workload && !M.status_set) {
            M.status = status;
            M.status_set = 1;
        }
    }
}

static void kill_rest(int sig)
{
    if (P.private_pidns)
        kill(-1, sig); /* everything in our pid namespace but us */
    else
        killpg(P.workload, sig); /* host pid namespace: only the workload's session */
}

static int forwarded(int sig)
{
    switch (sig) {
    /* fault signals are about the monitor itself (tini's list); SIGCHLD is ours */
    case SIGSEGV: case SIGBUS: case SIGILL: case SIGFPE: case SIGABRT: case SIGSYS:
    case SIGTRAP: case SIGKILL: case SIGSTOP: case SIGCHLD:
        return 0;
    }
    return 1;
}

/* "oom_kill N" of v2 memory.events / v1 memory.oom_control; -1 if none. */
static long long read_oom_kill(void)
{
    if (!P.oom)
        return -1;
    int fd = open(P.oom, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char text[4096];
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0)
        return -1;
    text[n] = 0;
    for (char *line = text; line && *line;) {
        char *next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        if (!strncmp(line, "oom_kill ", 9)) {
            char *end;
            errno = 0;
            long long v = strtoll(line + 9, &end, 10);
            return (errno || end == line + 9 || *end) ? -1 : v;
        }
        line = next;
    }
    return -1;
}

/* The exec-result pipe: "P<pid>\n" then maybe "E<code> <message>". */
static pid_t read_exec_result(char *error, size_t errsize)
{
    struct buf data = {0};
    char tmp[4096];
    for (;;) {
        ssize_t r = read(P.exec, tmp, sizeof tmp);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        buf_add(&data, tmp, (size_t)r);
    }
    close(P.exec);
    buf_add(&data, "", 1);
    char *text = data.p;
    pid_t host_pid = 0;
    error[0] = 0;
    char *rest = text;
    int has_p = text[0] == 'P';
    if (has_p) {
        host_pid = (pid_t)strtol(text + 1, NULL, 10);
        char *nl = strchr(text, '\n');
        rest = nl ? nl + 1 : text + strlen(text);
    }
    if (rest[0] == 'E') {
        char *sp = strchr(rest + 1, ' ');
        snprintf(error, errsize, "%s", sp && sp[1] ? sp + 1 : rest);
    } else if (!has_p) {
        snprintf(error, errsize, "the workload died before it could report (killed during set-up?)");
    }
    buf_free(&data);
    return host_pid;
}

static int receive_master(int sock)
{
    char byte;
    struct iovec iov = {&byte, 1};
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int))];
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.space,
                         .msg_controllen = sizeof u.space};
    if (recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) < 0)
        return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int fd;
            memcpy(&fd, CMSG_DATA(c), sizeof fd);
            return fd;
        }
    }
    return -1;
}

/* Written and renamed into place, not fsynced: the daemon reads it as soon
 * as this process is gone (a daemon crash loses nothing; the page cache
 * holds it), and on a power loss the container is gone with the host; the
 * fsync cost ~0.5 ms between the workload's exit and its restart. */
static int write_exit_file(const char *text, size_t n)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", P.exit);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    int bad = write_all(fd, text, n) < 0;
    close(fd);
    if (bad)
        return -1;
    return rename(tmp, P.exit);
}

/* --- main ---------------------------------------------------------------------- */

enum { T_SIG, T_LISTEN, T_CLIENT, T_STREAM, T_INPUT };

int main(void)
{
    /* First: container root must not reach the host through /proc/1/root or
     * /proc/1/fd (execve made us dumpable again). */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    read_params();
    if (!P.private_pidns)
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); /* not PID 1: reap the orphans anyway */
    prctl(PR_SET_NAME, "nsvisor-monitor", 0, 0, 0);
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
        for (int fd = 0; fd < 3; fd++)
            if (fd != devnull)
                dup2(devnull, fd);
        if (devnull > 2)
            close(devnull);
    }
    if (chdir("/") < 0)
        die("chdir /");
    M.stdin_w = P.stdin_w;

    L.fd = open_log(P.log);
    if (L.fd < 0)
        die("opening the log");
    long long oom_before = read_oom_kill();

    /* Signals: everything but the fault signals stays blocked (they arrived
     * blocked from the zygote's clone) and is read from a signalfd; a signal
     * that came before is still pending and is forwarded. Blocked signals
     * reach PID 1 even from inside its namespace. */
    sigset_t mask;
    sigemptyset(&mask);
    for (int sig = 1; sig < NSIG; sig++) {
        if (!forwarded(sig) && sig != SIGCHLD)
            continue;
        if (sigaddset(&mask, sig) < 0)
            continue; /* 32/33 belong to glibc */
        if (sig != SIGKILL && sig != SIGSTOP)
            signal(sig, SIG_DFL);
    }
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    if (sigprocmask(SIG_SETMASK, &mask, NULL) < 0)
        die("sigprocmask");
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0)
        die("signalfd");

    if (P.attach)
        attach_listen(); /* before "started": the daemon may connect right after */

    /* Release the workload. If it is gone already, the exec-result pipe says so. */
    if (write(P.sync, "G", 1) != 1) {
        sigset_t pending;
        struct timespec zero = {0, 0};
        if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE))
            sigtimedwait(&pipe_set, NULL, &zero);
    }
    close(P.sync);

    char error[4096];
    pid_t host_pid = read_exec_result(error, sizeof error);
    double started_at = now_real();
    if (P.console >= 0) {
        M.master = receive_master(P.console);
        close(P.console);
        if (M.master >= 0)
            set_nonblock(M.master);
    }
    if (M.stdin_w >= 0)
        set_nonblock(M.stdin_w);
    {
        struct buf ev = {0};
        if (!error[0]) {
            char head[96];
            snprintf(head, sizeof head, "{\"event\": \"started\", \"workload_pid\": %d, \"started_at\": ",
                     (int)host_pid);
            json_raw(&ev, head);
            json_double(&ev, started_at);
            json_raw(&ev, "}\n");
        } else {
            json_raw(&ev, "{\"event\": \"error\", \"message\": ");
            json_string(&ev, (const unsigned char *)error, strlen(error));
            json_raw(&ev, "}\n");
        }
        send_event(ev.p, ev.len);
        buf_free(&ev);
    }
    close(P.launch);
    P.launch = -1;

    if (P.log_max_size > 0) {
        struct stat st;
        L.size = fstat(L.fd, &st) == 0 ? st.st_size : 0;
    }
    M.fd[S_OUT] = P.out;
    M.fd[S_ERR] = P.err;
    M.fd[S_MASTER] = M.master;

    enum { RUNNING, TERMINATING, KILLING, DRAINING } phase = RUNNING;
    double deadline = -1;
    static char chunk[READ_CHUNK];
    struct pollfd *pfd = NULL;
    int (*tag)[2] = NULL;
    size_t pcap = 0;

    for (;;) {
        if (phase != RUNNING && deadline >= 0 && now_mono() >= deadline) {
            if (phase == TERMINATING) {
                kill_rest(SIGKILL);
                phase = KILLING;
                deadline = now_mono() + KILL_TIMEOUT_S;
            } else {
                break; /* killing or draining took too long: give up waiting */
            }
        }
        int any_stream = M.fd[0] >= 0 || M.fd[1] >= 0 || M.fd[2] >= 0;
        if (phase == DRAINING && !any_stream)
            break;
        int timeout = -1;
        if (deadline >= 0) {
            double left = deadline - now_mono();
            timeout = left <= 0 ? 0 : (int)ceil(left * 1000);
        }

        /* The interest set, built afresh each turn (it follows the buffers). */
        size_t need = 3 + NSTREAMS + A.n + 1;
        if (need > pcap) {
            pcap = need * 2;
            pfd = realloc(pfd, pcap * sizeof *pfd);
            tag = realloc(tag, pcap * sizeof *tag);
            if (!pfd || !tag)
                _exit(255);
        }
        size_t np = 0;
        int target = input_target();
        int target_merged = 0;
        pfd[np] = (struct pollfd){.fd = sfd, .events = POLLIN};
        tag[np][0] = T_SIG, tag[np++][1] = 0;
        for (int s = 0; s < NSTREAMS; s++) {
            if (M.fd[s] < 0)
                continue;
            short ev = POLLIN;
            if (M.fd[s] == target && M.input.len) {
                ev |= POLLOUT;
                target_merged = 1;
            }
            pfd[np] = (struct pollfd){.fd = M.fd[s], .events = ev};
            tag[np][0] = T_STREAM, tag[np++][1] = s;
        }
        if (target >= 0 && M.input.len && !target_merged) {
            pfd[np] = (struct pollfd){.fd = target, .events = POLLOUT};
            tag[np][0] = T_INPUT, tag[np++][1] = 0;
        }
        if (A.listener >= 0) {
            pfd[np] = (struct pollfd){.fd = A.listener, .events = POLLIN};
            tag[np][0] = T_LISTEN, tag[np++][1] = 0;
            int reading = M.input.len < INPUT_BUFFER;
            for (size_t i = 0; i < A.n; i++) {
                if (A.c[i].fd < 0)
                    continue;
                short ev = (short)((reading ? POLLIN : 0) | (A.c[i].out.len ? POLLOUT : 0));
                pfd[np] = (struct pollfd){.fd = A.c[i].fd, .events = ev ? ev : POLLHUP};
                tag[np][0] = T_CLIENT, tag[np++][1] = (int)i;
            }
        }
        int nready = poll(pfd, (nfds_t)np, timeout);
        if (nready < 0 && errno != EINTR)
            _exit(255);
        for (size_t k = 0; nready > 0 && k < np; k++) {
            short re = pfd[k].revents;
            if (!re)
                continue;
            switch (tag[k][0]) {
            case T_SIG: {
                struct signalfd_siginfo si[16];
                ssize_t r;
                while ((r = read(sfd, si, sizeof si)) > 0) {
                    for (size_t j = 0; j < (size_t)r / sizeof si[0]; j++) {
                        int sig = (int)si[j].ssi_signo;
                        if (forwarded(sig) && !M.status_set)
                            kill(P.workload, sig);
                    }
                }
                break;
            }
            case T_LISTEN:
                attach_accept();
                break;
            case T_CLIENT: {
                struct client *c = &A.c[tag[k][1]];
                if (c->fd != pfd[k].fd)
                    break; /* dropped (or replaced) during this turn */
                if (re & POLLOUT)
                    client_flush(c);
                if (c->fd >= 0 && (re & (POLLIN | POLLHUP | POLLERR)))
                    client_receive(c);
                break;
            }
            case T_INPUT:
                if ((re & POLLOUT) && pfd[k].fd == input_target())
                    write_input();
                break;
            case T_STREAM: {
                int s = tag[k][1];
                if ((re & POLLOUT) && pfd[k].fd == input_target())
                    write_input();
                if (M.fd[s] != pfd[k].fd || !(re & (POLLIN | POLLHUP | POLLERR)))
                    break;
                ssize_t r = read(M.fd[s], chunk, sizeof chunk);
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                    break;
                if (r > 0) {
                    log_feed(STREAM_OF[s], (unsigned char *)chunk, (size_t)r);
                    attach_broadcast(STREAM_OF[s], chunk, (size_t)r);
                } else { /* EOF, or EIO: a pty master once no slave is open */
                    log_flush(STREAM_OF[s]);
                    if (M.fd[s] == M.master)
                        M.master = -1;
                    close(M.fd[s]);
                    M.fd[s] = -1;
                }
                break;
            }
            }
        }
        if (M.input_eof && !M.input.len && M.stdin_w >= 0) {
            close(M.stdin_w);
            M.stdin_w = -1;
        }
        if (phase == DRAINING)
            continue;
        int none_left = reap();
        if (phase == RUNNING && M.status_set) {
            kill_rest(SIGTERM);
            phase = TERMINATING;
            deadline = now_mono() + P.grace;
        }
        if ((phase == TERMINATING || phase == KILLING) && none_left) {
            phase = DRAINING;
            deadline = now_mono() + DRAIN_TIMEOUT_S;
        }
    }
    log_flush(0);
    log_flush(1);
    close(L.fd);
    if (M.stdin_w >= 0)
        close(M.stdin_w);
    if (M.master >= 0)
        close(M.master);

    int status = M.status_set ? M.status : 0xff00; /* exit 255: lost */
    long long oom_after = read_oom_kill();
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    int code = sig ? 128 + sig : WIFEXITED(status) ? WEXITSTATUS(status) : 255;
    int oom = oom_before >= 0 && oom_after >= 0 && oom_after > oom_before;
    struct buf rec = {0};
    char head[128];
    snprintf(head, sizeof head, "{\"exit_code\": %d, \"signal\": ", code);
    json_raw(&rec, head);
    if (sig) {
        snprintf(head, sizeof head, "%d", sig);
        json_raw(&rec, head);
    } else {
        json_raw(&rec, "null");
    }
    json_raw(&rec, oom ? ", \"oom_killed\": true, \"started_at\": "
                       : ", \"oom_killed\": false, \"started_at\": ");
    json_double(&rec, started_at);
    json_raw(&rec, ", \"finished_at\": ");
    json_double(&rec, now_real());
    json_raw(&rec, "}\n");
    if (write_exit_file(rec.p, rec.len) < 0)
        _exit(255);
    /* After the exit file: a client that sees EOF finds the exit code. */
    attach_close();
    _exit(code & 0xff);
}
