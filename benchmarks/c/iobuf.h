/*
 * What the benchmarks' C programs share: a growable byte buffer, non-blocking reads and
 * writes over a stream socket, the 4-byte little-endian length prefix of every frame, a
 * monotonic clock and the stop flag set by SIGTERM/SIGINT.  Each program defines
 * `prog_name` (for error messages) before including this file.
 */
#ifndef BENCH_IOBUF_H
#define BENCH_IOBUF_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define HEADER_BYTES 4u
#define READ_CHUNK_BYTES (256u * 1024u) /* one read(2) takes at most this much */

static volatile sig_atomic_t stop_requested;

static inline void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static inline void die(const char *what)
{
    fprintf(stderr, "%s: %s: %s\n", prog_name, what, strerror(errno));
    exit(1);
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint32_t get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline void set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL, 0);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) die("fcntl");
}

/* A growable byte buffer: [start, len) holds data. */
typedef struct {
    unsigned char *data;
    size_t start, len, cap;
} buffer;

static inline void buf_reserve(buffer *b, size_t extra)
{
    if (b->start && b->start + b->len + extra > b->cap) {
        memmove(b->data, b->data + b->start, b->len);
        b->start = 0;
    }
    if (b->start + b->len + extra > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->start + b->len + extra) cap *= 2;
        b->data = realloc(b->data, cap);
        if (!b->data) die("realloc");
        b->cap = cap;
    }
}

static inline void buf_append(buffer *b, const void *src, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->data + b->start + b->len, src, n);
    b->len += n;
}

static inline void buf_consume(buffer *b, size_t n)
{
    b->start += n;
    b->len -= n;
    if (!b->len) b->start = 0;
}

/* Write what is pending; returns -1 on a broken connection, else bytes still pending. */
static inline ssize_t flush_out(int fd, buffer *out)
{
    while (out->len) {
        ssize_t n = write(fd, out->data + out->start, out->len);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return -1;
        }
        buf_consume(out, (size_t)n);
    }
    return (ssize_t)out->len;
}

/* Read once into `in`; returns bytes read, 0 at EOF, -1 on error, -2 if nothing was ready. */
static inline ssize_t read_some(int fd, buffer *in)
{
    buf_reserve(in, READ_CHUNK_BYTES);
    for (;;) {
        ssize_t n = read(fd, in->data + in->start + in->len, READ_CHUNK_BYTES);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -2;
        if (n > 0) in->len += (size_t)n;
        return n;
    }
}

static inline void install_stop_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

#endif
