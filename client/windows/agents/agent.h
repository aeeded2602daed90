/* Helpers shared by the test agents: hex in and out, line output that is flushed at once
 * (stdout on a pipe is fully buffered under Wine). */
#ifndef FLTEMU_TEST_AGENT_H
#define FLTEMU_TEST_AGENT_H

#include <windows.h>
#include <fltuser.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef FLT_PORT_FLAG_SYNC_HANDLE
#define FLT_PORT_FLAG_SYNC_HANDLE 0x00000001
#endif

static CRITICAL_SECTION out_lock;

static inline void out_init(void)
{
    InitializeCriticalSection(&out_lock);
}

/* One whole line on stdout, flushed; lines of several threads never interleave. */
static inline void out(const char *fmt, ...)
{
    va_list ap;
    EnterCriticalSection(&out_lock);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
    LeaveCriticalSection(&out_lock);
}

/* Hex digits of buf[0..len) into a static-free caller buffer of 2*len+1 bytes. */
static inline char *to_hex(const void *buf, size_t len, char *dst)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *p = buf;
    for (size_t i = 0; i < len; i++) {
        dst[2 * i] = digits[p[i] >> 4];
        dst[2 * i + 1] = digits[p[i] & 15];
    }
    dst[2 * len] = 0;
    return dst;
}

/* Parses hex digits ("-" is empty); returns the byte count. */
static inline size_t from_hex(const char *hex, unsigned char *dst, size_t cap)
{
    size_t n = 0;
    if (strcmp(hex, "-") == 0) return 0;
    while (hex[0] && hex[1] && n < cap) {
        char pair[3] = {hex[0], hex[1], 0};
        dst[n++] = (unsigned char)strtoul(pair, NULL, 16);
        hex += 2;
    }
    return n;
}

#endif
