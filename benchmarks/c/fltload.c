/*
 * fltload: a native load client for the fltemu daemon, so that the daemon's own ceiling can be
 * measured without a Python client in the way.  It speaks docs/protocol.md with the encoder
 * and decoder of the Windows side (client/windows/include/wire.h) to the ports of
 * benchmarks/_bench_filter.py, and reports the daemon's CPU time over the measured window.
 *
 *   fltload send PATH [--size N] [--conns K] [--inflight W] [--warmup-ms A] [--measure-ms B]
 *                     [--raw --cpu-pid PID]
 *       FilterSendMessage to \BenchEcho: K connections, each keeping W SendRequests in flight
 *       (the reply buffer is N bytes, so the echo returns all of them).  Counts the SendResults
 *       that complete inside the window; asks \BenchCtl for the daemon's CPU time
 *       ({"cmd": "cpu"}) when the window opens and when it closes.  With --raw it sends the
 *       SendRequests without a Connect (to baseline.py's bare server, which answers them the
 *       same way) and reads the CPU time of process PID from /proc (in clock ticks).
 *   fltload k2u PATH [--size N] [--readers R] [--warmup-ms A] [--measure-ms B]
 *       Kernel->user: one connection to \BenchK2U keeps R GetRequests pending and answers every
 *       message at once with a ReplyRequest of N bytes plus a new GetRequest, in one write per
 *       read.  \BenchCtl's "k2u" command runs R FltSendMessage loops in the daemon and measures
 *       the window there (count, latency and CPU time).
 *
 * Both print one JSON object: count, elapsed_ns, p50_ns, p99_ns, errors, daemon_cpu_ns.
 * Build: cc -O2 -I../../client/windows/include -o fltload fltload.c  (benchmarks/_harness.py
 * does it at run time).
 */
#define _GNU_SOURCE
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

static const char prog_name[] = "fltload";
#include "iobuf.h"
#include "wire.h"

#define MAX_CONNS 1024
#define CTL_REPLY_BYTES 65536u
#define FILTER_HEADER 16u /* FILTER_MESSAGE_HEADER: get buffers count it */

static const char ECHO_PORT[] = "\\BenchEcho";
static const char K2U_PORT[] = "\\BenchK2U";
static const char CTL_PORT[] = "\\BenchCtl";

static void fail(const char *what)
{
    fprintf(stderr, "%s: %s\n", prog_name, what);
    exit(1);
}

/* ---- frames -------------------------------------------------------------------------------- */

/* Room for one request frame with `payload` bytes of data at the end of `b`; returns a cursor. */
static struct wire_out frame_begin(buffer *b, size_t payload, unsigned char **start)
{
    buf_reserve(b, WIRE_REQUEST_MAX(payload));
    *start = b->data + b->start + b->len;
    struct wire_out o = {*start + HEADER_BYTES};
    return o;
}

static void frame_end(buffer *b, struct wire_out *o, unsigned char *start)
{
    b->len += (size_t)wire_finish(o, start);
}

static void put_connect(buffer *b, const char *port, const void *context, size_t context_len)
{
    unsigned char *start;
    struct wire_out o = frame_begin(b, strlen(port) + context_len, &start);
    wire_put_array(&o, 5);
    wire_put_uint(&o, WIRE_CONNECT);
    wire_put_uint(&o, WIRE_PROTOCOL_VERSION);
    wire_put_str(&o, port, strlen(port));
    wire_put_bin(&o, context, context_len);
    wire_put_uint(&o, 0);
    frame_end(b, &o, start);
}

static void put_send(buffer *b, uint64_t rid, const void *data, size_t len, unsigned out_size)
{
    unsigned char *start;
    struct wire_out o = frame_begin(b, len, &start);
    wire_put_array(&o, 4);
    wire_put_uint(&o, WIRE_SEND_REQUEST);
    wire_put_uint(&o, rid);
    wire_put_bin(&o, data, len);
    wire_put_uint(&o, out_size);
    frame_end(b, &o, start);
}

static void put_get(buffer *b, uint64_t rid, unsigned buffer_size)
{
    unsigned char *start;
    struct wire_out o = frame_begin(b, 0, &start);
    wire_put_array(&o, 3);
    wire_put_uint(&o, WIRE_GET_REQUEST);
    wire_put_uint(&o, rid);
    wire_put_uint(&o, buffer_size);
    frame_end(b, &o, start);
}

static void put_reply(buffer *b, uint64_t rid, uint64_t message_id, const void *data, size_t len)
{
    unsigned char *start;
    struct wire_out o = frame_begin(b, len, &start);
    wire_put_array(&o, 5);
    wire_put_uint(&o, WIRE_REPLY_REQUEST);
    wire_put_uint(&o, rid);
    wire_put_uint(&o, message_id);
    wire_put_uint(&o, 0); /* STATUS_SUCCESS */
    wire_put_bin(&o, data, len);
    frame_end(b, &o, start);
}

/* Decodes the next complete frame of `in` into `r`; 1 if there was one, 0 if not yet. */
static int next_frame(buffer *in, struct wire_result *r)
{
    if (in->len < HEADER_BYTES) return 0;
    const unsigned char *p = in->data + in->start;
    size_t size = get_le32(p);
    if (in->len - HEADER_BYTES < size) return 0;
    if (wire_decode(p + HEADER_BYTES, size, r) != 0) fail("malformed frame from the daemon");
    if (r->tag == WIRE_GOODBYE) fail("the daemon said goodbye");
    /* The frame stays in the buffer (r->data points into it) until the next call. */
    buf_consume(in, HEADER_BYTES + size);
    return 1;
}

/* ---- connections --------------------------------------------------------------------------- */

typedef struct {
    int fd;
    buffer in, out;
} conn;

/* Blocks until one frame has arrived on `c`. */
static void read_frame(conn *c, struct wire_result *r)
{
    while (!next_frame(&c->in, r)) {
        struct pollfd pfd = {c->fd, POLLIN, 0};
        ssize_t n = read_some(c->fd, &c->in);
        if (n == 0 || n == -1) fail("the daemon closed the connection");
        if (n == -2 && poll(&pfd, 1, -1) < 0 && errno != EINTR) die("poll");
    }
}

static void write_all(conn *c)
{
    while (c->out.len) {
        struct pollfd pfd = {c->fd, POLLOUT, 0};
        if (flush_out(c->fd, &c->out) < 0) die("write");
        if (c->out.len && poll(&pfd, 1, -1) < 0 && errno != EINTR) die("poll");
    }
}

/* A non-blocking socket connected to the daemon at `path`, without the protocol's handshake. */
static void raw_connect(conn *c, const char *path)
{
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(addr.sun_path)) fail("socket path too long");
    strcpy(addr.sun_path, path);
    memset(c, 0, sizeof(*c));
    c->fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (c->fd < 0) die("socket");
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) die("connect");
    set_nonblocking(c->fd);
}

/* FilterConnectCommunicationPort; the socket is non-blocking afterwards. */
static void port_connect(conn *c, const char *path, const char *port, const char *context)
{
    raw_connect(c, path);
    put_connect(&c->out, port, context, strlen(context));
    write_all(c);
    struct wire_result r;
    read_frame(c, &r);
    if (r.tag != WIRE_CONNECT_RESULT || r.status != 0) {
        fprintf(stderr, "%s: connecting to %s failed: 0x%08X\n", prog_name, port, r.status);
        exit(1);
    }
}

/* A JSON command to \BenchCtl, answered synchronously: the reply text, NUL-terminated. */
static const char *ctl_call(conn *ctl, uint64_t rid, const char *json, char *reply, size_t cap)
{
    put_send(&ctl->out, rid, json, strlen(json), CTL_REPLY_BYTES);
    write_all(ctl);
    struct wire_result r;
    read_frame(ctl, &r);
    if (r.tag != WIRE_SEND_RESULT || r.rid != rid || r.status != 0) fail("control command failed");
    size_t n = r.data_len < cap - 1 ? (size_t)r.data_len : cap - 1;
    memcpy(reply, r.data, n);
    reply[n] = 0;
    return reply;
}

/* The number after "key": in a flat JSON object; `fallback` when absent or null. */
static uint64_t json_u64(const char *json, const char *key, uint64_t fallback)
{
    char pattern[64];
    snprintf(pattern, sizeof(pattern), "\"%s\": ", key);
    const char *at = strstr(json, pattern);
    if (!at) return fallback;
    at += strlen(pattern);
    if (*at < '0' || *at > '9') return fallback;
    return strtoull(at, NULL, 10);
}

/* The CPU time (user + system) of process `pid` so far, from /proc/PID/stat, in ns. */
static uint64_t proc_cpu_ns(long pid)
{
    char path[64], text[1024];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) die("open /proc/PID/stat");
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = 0;
    const char *p = strrchr(text, ')'); /* the command name may hold spaces */
    if (!p) fail("unreadable /proc/PID/stat");
    unsigned long long utime = 0, stime = 0;
    /* fields after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt
     * cmajflt utime stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        fail("unreadable /proc/PID/stat");
    return (utime + stime) * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
}

static uint64_t daemon_cpu_ns(conn *ctl, uint64_t rid)
{
    char reply[256];
    ctl_call(ctl, rid, "{\"cmd\": \"cpu\"}", reply, sizeof(reply));
    uint64_t v = json_u64(reply, "cpu_ns", UINT64_MAX);
    if (v == UINT64_MAX) fail("the benchmark filter did not report its CPU time");
    return v;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void print_result(uint64_t count, uint64_t elapsed, uint64_t p50, uint64_t p99,
                         uint64_t errors, uint64_t cpu)
{
    printf("{\"count\": %llu, \"elapsed_ns\": %llu, \"p50_ns\": %llu, \"p99_ns\": %llu, "
           "\"errors\": %llu, \"daemon_cpu_ns\": %llu}\n",
           (unsigned long long)count, (unsigned long long)elapsed, (unsigned long long)p50,
           (unsigned long long)p99, (unsigned long long)errors, (unsigned long long)cpu);
}

/* ---- user->kernel sends -------------------------------------------------------------------- */

typedef struct {
    conn c;
    uint64_t *sent_at; /* by rid % inflight: rids of one connection are consecutive */
    uint64_t next_rid;
} sender;

/* The server's CPU time: from \BenchCtl, or from /proc when `pid` is given (--raw). */
static uint64_t server_cpu_ns(conn *ctl, uint64_t rid, long pid)
{
    return pid ? proc_cpu_ns(pid) : daemon_cpu_ns(ctl, rid);
}

static int run_send(const char *path, size_t size, int nconns, unsigned inflight,
                    uint64_t warmup_ns, uint64_t measure_ns, long cpu_pid)
{
    unsigned char *payload = malloc(size ? size : 1);
    sender *conns = calloc((size_t)nconns, sizeof(*conns));
    struct pollfd *pfds = calloc((size_t)nconns, sizeof(*pfds));
    size_t max_samples = 4000000, nsamples = 0;
    uint64_t *samples = malloc(max_samples * sizeof(uint64_t));
    if (!payload || !conns || !pfds || !samples) die("malloc");
    for (size_t i = 0; i < size; i++) payload[i] = (unsigned char)(i * 31u + 7u);
    conn ctl;
    memset(&ctl, 0, sizeof(ctl));
    ctl.fd = -1;
    if (!cpu_pid) port_connect(&ctl, path, CTL_PORT, "");
    uint64_t ctl_rid = 1;
    for (int i = 0; i < nconns; i++) {
        if (cpu_pid)
            raw_connect(&conns[i].c, path);
        else
            port_connect(&conns[i].c, path, ECHO_PORT, "");
        conns[i].sent_at = calloc(inflight, sizeof(uint64_t));
        if (!conns[i].sent_at) die("calloc");
        conns[i].next_rid = 1;
        pfds[i].fd = conns[i].c.fd;
    }
    uint64_t t0 = now_ns(), window_start = t0 + warmup_ns, window_end = window_start + measure_ns;
    uint64_t counted = 0, errors = 0, cpu_start = 0, cpu_end = 0;
    int started = 0;
    for (int i = 0; i < nconns; i++) {
        sender *s = &conns[i];
        for (unsigned k = 0; k < inflight; k++) {
            s->sent_at[s->next_rid % inflight] = t0;
            put_send(&s->c.out, s->next_rid++, payload, size, (unsigned)size);
        }
        if (flush_out(s->c.fd, &s->c.out) < 0) die("write");
    }
    int running = 1;
    while (running && !stop_requested) {
        for (int i = 0; i < nconns; i++)
            pfds[i].events = conns[i].c.out.len ? (POLLIN | POLLOUT) : POLLIN;
        if (poll(pfds, (nfds_t)nconns, 1000) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        for (int i = 0; i < nconns && running; i++) {
            short rev = pfds[i].revents;
            sender *s = &conns[i];
            if (rev & POLLOUT && flush_out(s->c.fd, &s->c.out) < 0) die("write");
            if (!(rev & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t n = read_some(s->c.fd, &s->c.in);
            if (n == -2) continue;
            if (n <= 0) fail("the daemon closed the connection");
            struct wire_result r;
            while (running && next_frame(&s->c.in, &r)) {
                if (r.tag != WIRE_SEND_RESULT || r.status != 0 || r.data_len != size) errors++;
                uint64_t t = now_ns();
                if (t >= window_end) {
                    running = 0;
                    break;
                }
                if (t >= window_start) {
                    if (!started) {
                        started = 1;
                        cpu_start = server_cpu_ns(&ctl, ctl_rid++, cpu_pid);
                        t = now_ns();
                        window_start = t; /* the window opens after the CPU sample */
                        window_end = t + measure_ns;
                    } else {
                        counted++;
                        if (nsamples < max_samples)
                            samples[nsamples++] = t - s->sent_at[r.rid % inflight];
                    }
                }
                s->sent_at[s->next_rid % inflight] = t;
                put_send(&s->c.out, s->next_rid++, payload, size, (unsigned)size);
            }
            if (running && flush_out(s->c.fd, &s->c.out) < 0) die("write");
        }
    }
    uint64_t elapsed = now_ns() - window_start;
    if (elapsed > measure_ns) elapsed = measure_ns;
    cpu_end = started ? server_cpu_ns(&ctl, ctl_rid++, cpu_pid) : 0;
    uint64_t p50 = 0, p99 = 0;
    if (nsamples) {
        qsort(samples, nsamples, sizeof(uint64_t), cmp_u64);
        p50 = samples[(nsamples - 1) / 2];
        p99 = samples[(size_t)((double)(nsamples - 1) * 0.99)];
    }
    print_result(counted, elapsed, p50, p99, errors, cpu_end - cpu_start);
    for (int i = 0; i < nconns; i++) close(conns[i].c.fd);
    if (ctl.fd >= 0) close(ctl.fd);
    return errors ? 1 : 0;
}

/* ---- kernel->user messages ----------------------------------------------------------------- */

static int run_k2u(const char *path, size_t size, unsigned readers, uint64_t warmup_ns,
                   uint64_t measure_ns)
{
    unsigned char *reply = malloc(size ? size : 1);
    if (!reply) die("malloc");
    for (size_t i = 0; i < size; i++) reply[i] = (unsigned char)(i * 17u + 3u);
    char token[64], command[512];
    snprintf(token, sizeof(token), "fltload-%ld", (long)getpid());
    conn port, ctl;
    port_connect(&port, path, K2U_PORT, token);
    port_connect(&ctl, path, CTL_PORT, "");
    unsigned buffer_size = (unsigned)size + FILTER_HEADER;
    uint64_t rid = 1, errors = 0;
    for (unsigned k = 0; k < readers; k++) put_get(&port.out, rid++, buffer_size);
    snprintf(command, sizeof(command),
             "{\"cmd\": \"k2u\", \"token\": \"%s\", \"payload_size\": %zu, \"reply\": %zu, "
             "\"senders\": %u, \"seed\": 1, \"warmup_ns\": %llu, \"measure_ns\": %llu}",
             token, size, size, readers, (unsigned long long)warmup_ns,
             (unsigned long long)measure_ns);
    put_send(&ctl.out, 1, command, strlen(command), CTL_REPLY_BYTES);
    write_all(&ctl);
    struct pollfd pfds[2] = {{port.fd, POLLIN, 0}, {ctl.fd, POLLIN, 0}};
    char result[4096];
    result[0] = 0;
    while (!result[0] && !stop_requested) {
        pfds[0].events = port.out.len ? (POLLIN | POLLOUT) : POLLIN;
        if (poll(pfds, 2, 1000) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        if (pfds[0].revents & POLLOUT && flush_out(port.fd, &port.out) < 0) die("write");
        if (pfds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read_some(port.fd, &port.in);
            if (n == 0 || n == -1) fail("the daemon closed the connection");
            struct wire_result r;
            while (next_frame(&port.in, &r)) {
                if (r.tag == WIRE_GET_RESULT && r.status == 0) {
                    put_reply(&port.out, rid++, r.message_id, reply, size);
                    put_get(&port.out, rid++, buffer_size);
                } else if (r.tag != WIRE_REPLY_RESULT || r.status != 0) {
                    errors++;
                }
            }
            if (flush_out(port.fd, &port.out) < 0) die("write");
        }
        if (pfds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read_some(ctl.fd, &ctl.in);
            if (n == 0 || n == -1) fail("the daemon closed the control connection");
            struct wire_result r;
            if (next_frame(&ctl.in, &r)) {
                if (r.tag != WIRE_SEND_RESULT || r.status != 0) fail("the k2u command failed");
                size_t len =
                    r.data_len < sizeof(result) - 1 ? (size_t)r.data_len : sizeof(result) - 1;
                memcpy(result, r.data, len);
                result[len] = 0;
            }
        }
    }
    if (strstr(result, "\"error\"")) {
        fprintf(stderr, "%s: the benchmark filter refused: %s\n", prog_name, result);
        return 1;
    }
    errors += json_u64(result, "errors", 0);
    print_result(json_u64(result, "count", 0), json_u64(result, "elapsed_ns", 0),
                 json_u64(result, "p50_ns", 0), json_u64(result, "p99_ns", 0), errors,
                 json_u64(result, "cpu_ns", 0));
    close(port.fd);
    close(ctl.fd);
    return errors ? 1 : 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: fltload send PATH [--size N] [--conns K] [--inflight W] [--warmup-ms A]\n"
            "                         [--measure-ms B] [--raw --cpu-pid PID]\n"
            "       fltload k2u PATH [--size N] [--readers R] [--warmup-ms A] [--measure-ms B]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 3) usage();
    install_stop_handlers();
    int k2u = strcmp(argv[1], "k2u") == 0;
    if (!k2u && strcmp(argv[1], "send") != 0) usage();
    long size = 64, conns = 1, inflight = 1, readers = 1, warmup_ms = 300, measure_ms = 1000;
    long cpu_pid = 0;
    int raw = 0;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--raw") && !k2u) {
            raw = 1;
            continue;
        }
        if (i + 1 >= argc) usage();
        const char *opt = argv[i], *val = argv[++i];
        char *end;
        long v = strtol(val, &end, 10);
        if (end == val || *end || v < 0) usage();
        if (!strcmp(opt, "--size"))
            size = v;
        else if (!strcmp(opt, "--conns") && !k2u)
            conns = v;
        else if (!strcmp(opt, "--inflight") && !k2u)
            inflight = v;
        else if (!strcmp(opt, "--readers") && k2u)
            readers = v;
        else if (!strcmp(opt, "--warmup-ms"))
            warmup_ms = v;
        else if (!strcmp(opt, "--measure-ms"))
            measure_ms = v;
        else if (!strcmp(opt, "--cpu-pid") && !k2u)
            cpu_pid = v;
        else
            usage();
    }
    if (raw != (cpu_pid > 0)) usage(); /* --raw needs the server's pid, and the other way round */
    if (size < 1 || size > 16 * 1024 * 1024 || conns < 1 || conns > MAX_CONNS || inflight < 1 ||
        readers < 1 || readers > 1024 || inflight > 1024)
        usage();
    uint64_t warmup = (uint64_t)warmup_ms * 1000000u, measure = (uint64_t)measure_ms * 1000000u;
    if (k2u) return run_k2u(argv[2], (size_t)size, (unsigned)readers, warmup, measure);
    return run_send(argv[2], (size_t)size, (int)conns, (unsigned)inflight, warmup, measure,
                    cpu_pid);
}
