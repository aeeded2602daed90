/*
 * Raw x86_64 Linux system calls from PE code running under Wine.
 *
 * Wine 8.0 has no Winsock AF_UNIX, but a PE module may issue the `syscall` instruction
 * itself: the Linux kernel does not know or care that the caller is "Windows" code.  That is
 * how fltemu.sys reaches the daemon's Unix socket, so the daemon sees the Wine process's
 * real uid through SO_PEERCRED.  Arguments are `long long`: `long` is 32-bit on Win64.
 *
 * Every function returns the kernel's result: >= 0 on success, -errno on failure.
 */
#ifndef FLTEMU_LINUX_H
#define FLTEMU_LINUX_H

#define LNX_SYS_read 0
#define LNX_SYS_close 3
#define LNX_SYS_socket 41
#define LNX_SYS_connect 42
#define LNX_SYS_sendto 44
#define LNX_SYS_shutdown 48
#define LNX_SYS_setsockopt 54
#define LNX_SYS_getsockopt 55
#define LNX_SYS_geteuid 107

#define LNX_AF_UNIX 1
#define LNX_SOCK_STREAM 1
#define LNX_SOCK_CLOEXEC 02000000
#define LNX_MSG_NOSIGNAL 0x4000
#define LNX_MSG_DONTWAIT 0x40
#define LNX_SHUT_WR 1
#define LNX_SHUT_RDWR 2

#define LNX_EINTR 4
#define LNX_EAGAIN 11
#define LNX_ENOENT 2
#define LNX_EACCES 13
#define LNX_EPERM 1
#define LNX_ECONNREFUSED 111

struct lnx_sockaddr_un {
    unsigned short sun_family;
    char sun_path[108];
};

static inline long long lnx_syscall6(long long n, long long a, long long b, long long c,
                                     long long d, long long e, long long f)
{
    long long ret;
    register long long r10 __asm__("r10") = d;
    register long long r8 __asm__("r8") = e;
    register long long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

static inline long long lnx_syscall3(long long n, long long a, long long b, long long c)
{
    return lnx_syscall6(n, a, b, c, 0, 0, 0);
}

/* read(2), retried on EINTR (Wine's own signals may interrupt a blocked thread). */
static inline long long lnx_read(int fd, void *buf, unsigned long long len)
{
    long long r;
    do r = lnx_syscall3(LNX_SYS_read, fd, (long long)buf, (long long)len);
    while (r == -LNX_EINTR);
    return r;
}

/* Reads exactly `len` bytes: 1, or 0 at EOF or on an error. */
static inline int lnx_read_full(int fd, unsigned char *p, unsigned long long len)
{
    while (len) {
        long long n = lnx_read(fd, p, len);
        if (n <= 0) return 0;
        p += n;
        len -= (unsigned long long)n;
    }
    return 1;
}

/* send(2) with MSG_NOSIGNAL (a dead daemon gives -EPIPE, never a SIGPIPE) and `flags`. */
static inline long long lnx_send_flags(int fd, const void *buf, unsigned long long len, int flags)
{
    long long r;
    do
        r = lnx_syscall6(LNX_SYS_sendto, fd, (long long)buf, (long long)len,
                         LNX_MSG_NOSIGNAL | flags, 0, 0);
    while (r == -LNX_EINTR);
    return r;
}

static inline long long lnx_send(int fd, const void *buf, unsigned long long len)
{
    return lnx_send_flags(fd, buf, len, 0);
}

static inline long long lnx_socket_unix(void)
{
    return lnx_syscall3(LNX_SYS_socket, LNX_AF_UNIX, LNX_SOCK_STREAM | LNX_SOCK_CLOEXEC, 0);
}

static inline long long lnx_connect(int fd, const struct lnx_sockaddr_un *addr, unsigned int len)
{
    long long r;
    do r = lnx_syscall3(LNX_SYS_connect, fd, (long long)addr, len);
    while (r == -LNX_EINTR);
    return r;
}

/* SO_RCVTIMEO / SO_SNDTIMEO: a blocking call on fd gives up after `seconds`. */
static inline void lnx_set_timeouts(int fd, long long seconds)
{
    long long tv[2] = {seconds, 0}; /* struct timeval on x86_64 */
    lnx_syscall6(LNX_SYS_setsockopt, fd, 1 /* SOL_SOCKET */, 20 /* SO_RCVTIMEO */, (long long)tv,
                 sizeof tv, 0);
    lnx_syscall6(LNX_SYS_setsockopt, fd, 1 /* SOL_SOCKET */, 21 /* SO_SNDTIMEO */, (long long)tv,
                 sizeof tv, 0);
}

/* The effective uid: the one SO_PEERCRED reports and that owns what a process creates. */
static inline long long lnx_geteuid(void)
{
    return lnx_syscall3(LNX_SYS_geteuid, 0, 0, 0);
}

/* The uid of the process at the other end of a Unix socket (SO_PEERCRED), or -1. */
static inline long long lnx_peer_uid(int fd)
{
    int cred[3] = {0, -1, -1}; /* struct ucred: pid, uid, gid */
    unsigned int len = sizeof cred;
    if (lnx_syscall6(LNX_SYS_getsockopt, fd, 1 /* SOL_SOCKET */, 17 /* SO_PEERCRED */,
                     (long long)cred, (long long)&len, 0) < 0)
        return -1;
    return (unsigned int)cred[1];
}

/* May the Windows side talk to a daemon run by `uid`?  Its own (effective) user, root, or
 * `trusted` (FLTEMU_TRUST_UID; -1 for none); a uid that could not be read (-1) is refused.
 * The same rule as every fltemu client's (protocol §1, fltemu.wire.is_trusted_peer). */
static inline int lnx_trusted_peer(long long uid, long long trusted)
{
    return uid >= 0 && (uid == 0 || uid == lnx_geteuid() || uid == trusted);
}

static inline long long lnx_shutdown(int fd, int how)
{
    return lnx_syscall3(LNX_SYS_shutdown, fd, how, 0);
}

static inline long long lnx_close(int fd)
{
    return lnx_syscall3(LNX_SYS_close, fd, 0, 0);
}

#endif
