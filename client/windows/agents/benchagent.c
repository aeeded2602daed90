/*
 * benchagent.exe: rates through the Windows side, for benchmarks/bench_wine.py.
 *
 *   benchagent.exe nop COUNT              a no-op IOCTL on fltemu's device (answered by the
 *                                         driver alone): Wine's own round trip
 *   benchagent.exe iocp COUNT             a round trip between two threads through two
 *                                         completion ports (no fltemu): Wine's floor for a
 *                                         message completed on a port
 *   benchagent.exe send PORT COUNT SIZE   sequential FilterSendMessage of SIZE bytes
 *   benchagent.exe get PORT COUNT N [T]   kernel->user: N overlapped gets on an IOCP, T
 *                                         worker threads (default 1) replying to each
 *                                         message and re-arming its get
 *
 * Prints "rate OPERATIONS SECONDS" when done; exits 1 on any failure.
 */
#include "agent.h"
#include <winternl.h>

#include "../include/fltemu_ioctl.h"

NTSTATUS NTAPI NtDeviceIoControlFile(HANDLE, HANDLE, PIO_APC_ROUTINE, PVOID, PIO_STATUS_BLOCK,
                                     ULONG, PVOID, ULONG, PVOID, ULONG);

static double now(void)
{
    LARGE_INTEGER t, f;
    QueryPerformanceCounter(&t);
    QueryPerformanceFrequency(&f);
    return (double)t.QuadPart / (double)f.QuadPart;
}

static HANDLE connect_port(const char *name)
{
    WCHAR wname[256];
    HANDLE port;
    MultiByteToWideChar(CP_UTF8, 0, name, -1, wname, 256);
    HRESULT hr = FilterConnectCommunicationPort(wname, 0, NULL, 0, NULL, &port);
    if (FAILED(hr)) {
        out("connect 0x%08lx", (unsigned long)hr);
        ExitProcess(1);
    }
    out("connected");
    return port;
}

static int bench_nop(long count)
{
    UNICODE_STRING name;
    OBJECT_ATTRIBUTES attr;
    IO_STATUS_BLOCK iosb;
    HANDLE h, ev = CreateEventW(NULL, FALSE, FALSE, NULL);
    RtlInitUnicodeString(&name, FLTEMU_OPEN_NAME);
    InitializeObjectAttributes(&attr, &name, 0, NULL, NULL);
    if (NtCreateFile(&h, SYNCHRONIZE | FILE_READ_DATA | FILE_WRITE_DATA, &attr, &iosb, NULL, 0,
                     FILE_SHARE_READ | FILE_SHARE_WRITE, 1 /* FILE_OPEN */, 0, NULL, 0)) {
        out("no device");
        return 1;
    }
    double start = now();
    for (long i = 0; i < count; i++) {
        /* An unconnected handle: the driver completes the IOCTL at once. */
        NtDeviceIoControlFile(h, ev, NULL, NULL, &iosb, IOCTL_FLTEMU_GET, NULL, 0, &iosb,
                              sizeof iosb);
    }
    out("rate %ld %.6f", count, now() - start);
    return 0;
}

static int bench_send(const char *port_name, long count, DWORD size)
{
    HANDLE port = connect_port(port_name);
    unsigned char *in = calloc(1, size + 1), *outbuf = calloc(1, size + 1);
    DWORD got;
    double start = now();
    for (long i = 0; i < count; i++) {
        HRESULT hr = FilterSendMessage(port, in, size, outbuf, size, &got);
        if (FAILED(hr)) {
            out("send 0x%08lx", (unsigned long)hr);
            return 1;
        }
    }
    out("rate %ld %.6f", count, now() - start);
    return 0;
}

typedef struct {
    FILTER_MESSAGE_HEADER header;
    unsigned char body[65536];
    OVERLAPPED ov;
} MESSAGE;

struct get_bench {
    HANDLE port, iocp;
    volatile LONG left; /* completions still to take */
    volatile LONG failed;
    double start;
};

static DWORD WINAPI get_worker(void *arg)
{
    struct get_bench *b = arg;
    struct {
        FILTER_REPLY_HEADER h;
        unsigned char b[8];
    } reply;
    while (InterlockedDecrement(&b->left) >= 0) {
        DWORD bytes;
        ULONG_PTR key;
        LPOVERLAPPED ov;
        if (!GetQueuedCompletionStatus(b->iocp, &bytes, &key, &ov, INFINITE)) {
            out("completion %lu", GetLastError());
            b->failed = 1;
            return 1;
        }
        MESSAGE *m = CONTAINING_RECORD(ov, MESSAGE, ov);
        if (m->header.MessageId) {
            memset(&reply, 0, sizeof reply);
            reply.h.MessageId = m->header.MessageId;
            DWORD n = m->header.ReplyLength > sizeof reply ? sizeof reply : m->header.ReplyLength;
            HRESULT hr =
                FilterReplyMessage(b->port, &reply.h, n < sizeof reply.h ? sizeof reply.h : n);
            if (FAILED(hr) && hr != (HRESULT)0x801F0020) {
                out("reply 0x%08lx", (unsigned long)hr);
                b->failed = 1;
                return 1;
            }
        }
        memset(&m->ov, 0, sizeof m->ov);
        FilterGetMessage(b->port, &m->header, FIELD_OFFSET(MESSAGE, ov), &m->ov);
    }
    return 0;
}

static int bench_get(const char *port_name, long count, int pending, int threads)
{
    struct get_bench b;
    HANDLE workers[64];
    b.port = connect_port(port_name);
    b.iocp = CreateIoCompletionPort(b.port, NULL, 0, threads);
    b.failed = 0;
    if (threads < 1 || threads > 64) return 2;
    for (int i = 0; i < pending; i++) {
        MESSAGE *m = calloc(1, sizeof *m);
        if (FilterGetMessage(b.port, &m->header, FIELD_OFFSET(MESSAGE, ov), &m->ov) !=
            HRESULT_FROM_WIN32(ERROR_IO_PENDING))
            return 1;
    }
    /* The clock starts at the first message, as the sender's does. */
    DWORD bytes;
    ULONG_PTR key;
    LPOVERLAPPED ov;
    if (!GetQueuedCompletionStatus(b.iocp, &bytes, &key, &ov, INFINITE)) return 1;
    b.start = now();
    PostQueuedCompletionStatus(b.iocp, bytes, key, ov);
    b.left = count;
    for (int i = 0; i < threads; i++) workers[i] = CreateThread(NULL, 0, get_worker, &b, 0, NULL);
    WaitForMultipleObjects(threads, workers, TRUE, INFINITE);
    if (b.failed) return 1;
    out("rate %ld %.6f", count - 1, now() - b.start);
    return 0;
}

/* The floor of a message completed through a completion port, with no fltemu at all: two
 * threads bounce a packet between two ports (PostQueuedCompletionStatus, then
 * GetQueuedCompletionStatus), so a round trip is two completions. */
static HANDLE g_ping, g_pong;

static DWORD WINAPI pong_thread(void *arg)
{
    long count = (long)(LONG_PTR)arg;
    for (long i = 0; i < count; i++) {
        DWORD bytes;
        ULONG_PTR key;
        LPOVERLAPPED ov;
        if (!GetQueuedCompletionStatus(g_ping, &bytes, &key, &ov, INFINITE)) return 1;
        PostQueuedCompletionStatus(g_pong, bytes, key, ov);
    }
    return 0;
}

static int bench_iocp(long count)
{
    g_ping = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1);
    g_pong = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1);
    HANDLE t = CreateThread(NULL, 0, pong_thread, (void *)(LONG_PTR)count, 0, NULL);
    double start = now();
    for (long i = 0; i < count; i++) {
        DWORD bytes;
        ULONG_PTR key;
        LPOVERLAPPED ov;
        PostQueuedCompletionStatus(g_ping, 1, 0, NULL);
        if (!GetQueuedCompletionStatus(g_pong, &bytes, &key, &ov, INFINITE)) return 1;
    }
    out("rate %ld %.6f", count, now() - start);
    WaitForSingleObject(t, INFINITE);
    return 0;
}

int main(int argc, char **argv)
{
    out_init();
    if (argc == 3 && !strcmp(argv[1], "nop")) return bench_nop(atol(argv[2]));
    if (argc == 3 && !strcmp(argv[1], "iocp")) return bench_iocp(atol(argv[2]));
    if (argc == 5 && !strcmp(argv[1], "send"))
        return bench_send(argv[2], atol(argv[3]), strtoul(argv[4], NULL, 0));
    if ((argc == 5 || argc == 6) && !strcmp(argv[1], "get"))
        return bench_get(argv[2], atol(argv[3]), atoi(argv[4]), argc == 6 ? atoi(argv[5]) : 1);
    out("usage: benchagent.exe nop COUNT | iocp COUNT | send PORT COUNT SIZE | get PORT COUNT "
        "PENDING [THREADS]");
    return 2;
}
