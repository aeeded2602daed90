/*
 * ipcbench: the C reference for fltemu's benchmarks. A request/reply echo server and a load
 * generator over an AF_UNIX stream socket, with the framing fltemu uses: a 4-byte
 * little-endian length, then that many payload bytes. The server echoes every frame; the
 * client keeps `inflight` requests outstanding on each of `conns` connections (seq = 1 x 1,
 * pipelined = 1 x 64, concurrent = 8 x 1) and counts the replies that complete inside the
 * measured window, after a warm-up.
 *
 *   ipcbench server PATH
 *       Listens on PATH, prints "ready" on stdout once it accepts, serves until SIGTERM/SIGINT.
 *       A poll(2) loop: every complete frame of one read is echoed, and all the replies one
 *       read produced leave in one write(2).
 *   ipcbench client PATH [--size N] [--conns K] [--inflight W] [--warmup-ms A]
 *                        [--measure-ms B] [--max-samples M]
 *       Prints one JSON object: count, elapsed_ns, p50_ns, p99_ns, samples.
 *
 * Build: cc -O2 -o ipcbench ipcbench.c   (benchmarks/_harness.py does it at run time).
 */
#define _GNU_SOURCE
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

static const char prog_name[] = "ipcbench";
#include "iobuf.h"

#define MAX_FRAME_BYTES (64u * 1024u * 1024u)
#define MAX_FDS 8192

/* ------------------------------------------------------------------------------------------ */
/* server                                                                                     */

typedef struct {
    buffer in, out;
} conn_state;

static int run_server(const char *path)
{
    struct sockaddr_un addr;
    if (strlen(path) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "ipcbench: socket path too long\n");
        return 2;
    }
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path);
    unlink(path);
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (lfd < 0) die("socket");
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0) die("bind");
    if (listen(lfd, 1024) < 0) die("listen");
    set_nonblocking(lfd);

    struct pollfd *pfds = calloc(MAX_FDS, sizeof(*pfds));
    conn_state *conns = calloc(MAX_FDS, sizeof(*conns));
    if (!pfds || !conns) die("calloc");
    int nfds = 1;
    pfds[0].fd = lfd;
    pfds[0].events = POLLIN;

    printf("ready\n");
    fflush(stdout);

    while (!stop_requested) {
        int ready = poll(pfds, (nfds_t)nfds, 200);
        if (ready < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        if (ready == 0) continue;
        if (pfds[0].revents & POLLIN) {
            for (;;) {
                int cfd = accept(lfd, NULL, NULL);
                if (cfd < 0) break;
                if (nfds >= MAX_FDS) {
                    close(cfd);
                    continue;
                }
                set_nonblocking(cfd);
                pfds[nfds].fd = cfd;
                pfds[nfds].events = POLLIN;
                pfds[nfds].revents = 0;
                memset(&conns[nfds], 0, sizeof(conns[nfds]));
                nfds++;
            }
        }
        for (int i = 1; i < nfds; i++) {
            short rev = pfds[i].revents;
            if (!rev) continue;
            int fd = pfds[i].fd;
            conn_state *c = &conns[i];
            int dead = 0;
            if (rev & POLLOUT) {
                if (flush_out(fd, &c->out) < 0) dead = 1;
            }
            if (!dead && (rev & (POLLIN | POLLHUP | POLLERR)) && !c->out.len) {
                ssize_t n = read_some(fd, &c->in);
                if (n == 0 || n == -1) {
                    dead = 1;
                } else if (n > 0) {
                    /* Echo every complete frame, then write them all at once. */
                    size_t used = 0;
                    unsigned char *p = c->in.data + c->in.start;
                    while (c->in.len - used >= HEADER_BYTES) {
                        uint32_t size = get_le32(p + used);
                        if (size > MAX_FRAME_BYTES) {
                            dead = 1;
                            break;
                        }
                        if (c->in.len - used < HEADER_BYTES + size) break;
                        buf_append(&c->out, p + used, HEADER_BYTES + size);
                        p = c->in.data + c->in.start; /* buf_append never moves `in` */
                        used += HEADER_BYTES + size;
                    }
                    buf_consume(&c->in, used);
                    if (!dead && flush_out(fd, &c->out) < 0) dead = 1;
                }
            }
            if (dead) {
                close(fd);
                free(c->in.data);
                free(c->out.data);
                nfds--;
                if (i != nfds) {
                    pfds[i] = pfds[nfds];
                    conns[i] = conns[nfds];
                    i--; /* look at the moved entry: its revents are still to handle */
                }
                continue;
            }
            pfds[i].events = c->out.len ? POLLOUT : POLLIN;
        }
    }
    for (int i = 1; i < nfds; i++) close(pfds[i].fd);
    close(lfd);
    unlink(path);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* client (load generator)                                                                    */

typedef struct {
    buffer in, out;
    uint64_t *sent_at; /* FIFO of send times: the echo keeps the order */
    unsigned head, count, window;
} client_conn;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void queue_request(client_conn *c, const unsigned char *frame, size_t frame_len, uint64_t t)
{
    buf_append(&c->out, frame, frame_len);
    c->sent_at[(c->head + c->count) % c->window] = t;
    c->count++;
}

static int run_client(const char *path, size_t size, int nconns, unsigned inflight,
                      uint64_t warmup_ns, uint64_t measure_ns, size_t max_samples)
{
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "ipcbench: socket path too long\n");
        return 2;
    }
    strcpy(addr.sun_path, path);

    size_t frame_len = HEADER_BYTES + size;
    unsigned char *frame = malloc(frame_len);
    if (!frame) die("malloc");
    put_le32(frame, (uint32_t)size);
    for (size_t i = 0; i < size; i++) frame[HEADER_BYTES + i] = (unsigned char)(i * 31u + 7u);

    client_conn *conns = calloc((size_t)nconns, sizeof(*conns));
    struct pollfd *pfds = calloc((size_t)nconns, sizeof(*pfds));
    uint64_t *samples = malloc((max_samples ? max_samples : 1) * sizeof(uint64_t));
    if (!conns || !pfds || !samples) die("calloc");

    for (int i = 0; i < nconns; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) die("connect");
        set_nonblocking(fd);
        pfds[i].fd = fd;
        conns[i].window = inflight;
        conns[i].sent_at = calloc(inflight, sizeof(uint64_t));
        if (!conns[i].sent_at) die("calloc");
    }

    uint64_t t0 = now_ns();
    uint64_t window_start = t0 + warmup_ns, window_end = window_start + measure_ns;
    uint64_t counted = 0;
    size_t nsamples = 0;
    int errors = 0;

    for (int i = 0; i < nconns; i++) {
        for (unsigned k = 0; k < inflight; k++) queue_request(&conns[i], frame, frame_len, t0);
        if (flush_out(pfds[i].fd, &conns[i].out) < 0) die("write");
    }

    int running = 1;
    while (running && !stop_requested) {
        for (int i = 0; i < nconns; i++)
            pfds[i].events = conns[i].out.len ? (POLLIN | POLLOUT) : POLLIN;
        int ready = poll(pfds, (nfds_t)nconns, 1000);
        if (ready < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        for (int i = 0; i < nconns && running; i++) {
            short rev = pfds[i].revents;
            if (!rev) continue;
            client_conn *c = &conns[i];
            if (rev & POLLOUT) {
                if (flush_out(pfds[i].fd, &c->out) < 0) die("write");
            }
            if (!(rev & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t n = read_some(pfds[i].fd, &c->in);
            if (n == -2) continue;
            if (n <= 0) {
                fprintf(stderr, "ipcbench: the server closed the connection\n");
                errors++;
                running = 0;
                break;
            }
            size_t used = 0;
            unsigned char *p = c->in.data + c->in.start;
            while (c->in.len - used >= HEADER_BYTES) {
                uint32_t got = get_le32(p + used);
                if (c->in.len - used < HEADER_BYTES + got) break;
                used += HEADER_BYTES + got;
                if (got != size) errors++;
                uint64_t t = now_ns();
                uint64_t sent = c->sent_at[c->head];
                c->head = (c->head + 1) % c->window;
                c->count--;
                if (t >= window_end) {
                    running = 0;
                    break;
                }
                if (t >= window_start) {
                    counted++;
                    if (nsamples < max_samples) samples[nsamples++] = t - sent;
                }
                queue_request(c, frame, frame_len, t);
            }
            buf_consume(&c->in, used);
            if (running && flush_out(pfds[i].fd, &c->out) < 0) die("write");
        }
    }
    uint64_t elapsed = now_ns() - window_start;
    if (elapsed > measure_ns) elapsed = measure_ns; /* the window closed at window_end */

    uint64_t p50 = 0, p99 = 0;
    if (nsamples) {
        qsort(samples, nsamples, sizeof(uint64_t), cmp_u64);
        p50 = samples[(nsamples - 1) / 2];
        p99 = samples[(size_t)((double)(nsamples - 1) * 0.99)];
    }
    printf("{\"count\": %llu, \"elapsed_ns\": %llu, \"p50_ns\": %llu, \"p99_ns\": %llu, "
           "\"samples\": %zu, \"errors\": %d, \"size\": %zu, \"conns\": %d, \"inflight\": %u}\n",
           (unsigned long long)counted, (unsigned long long)elapsed, (unsigned long long)p50,
           (unsigned long long)p99, nsamples, errors, size, nconns, inflight);
    for (int i = 0; i < nconns; i++) close(pfds[i].fd);
    return errors ? 1 : 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: ipcbench server PATH\n"
            "       ipcbench client PATH [--size N] [--conns K] [--inflight W]\n"
            "                            [--warmup-ms A] [--measure-ms B] [--max-samples M]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 3) usage();
    install_stop_handlers();

    if (strcmp(argv[1], "server") == 0) return run_server(argv[2]);
    if (strcmp(argv[1], "client") != 0) usage();

    size_t size = 64, max_samples = 2000000;
    long conns = 1, inflight = 1, warmup_ms = 300, measure_ms = 1000;
    for (int i = 3; i < argc; i++) {
        if (i + 1 >= argc) usage();
        const char *opt = argv[i], *val = argv[++i];
        long v = strtol(val, NULL, 10);
        if (v < 0) usage();
        if (!strcmp(opt, "--size"))
            size = (size_t)v;
        else if (!strcmp(opt, "--conns"))
            conns = v;
        else if (!strcmp(opt, "--inflight"))
            inflight = v;
        else if (!strcmp(opt, "--warmup-ms"))
            warmup_ms = v;
        else if (!strcmp(opt, "--measure-ms"))
            measure_ms = v;
        else if (!strcmp(opt, "--max-samples"))
            max_samples = (size_t)v;
        else
            usage();
    }
    if (conns < 1 || conns > MAX_FDS || inflight < 1 || size > MAX_FRAME_BYTES) usage();
    return run_client(argv[2], size, (int)conns, (unsigned)inflight, (uint64_t)warmup_ms * 1000000u,
                      (uint64_t)measure_ms * 1000000u, max_samples);
}
