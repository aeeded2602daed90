/*
 * probe.exe: a Windows agent driven line by line from stdin, so that tests can make every
 * fltlib call in any order and read what it returned.  Each command prints one line.
 *
 *   connect NAME [CTXHEX|-] [OPTIONS]  FilterConnectCommunicationPort        "connect 0x%08x"
 *   connectbad                          NULL context with a size: E_INVALIDARG
 *   send HEX OUTSIZE                    FilterSendMessage      "send 0x%08x n=N out=HEX"
 *   sendat HEX OUTSIZE SKEW             FilterSendMessage with lpOutBuffer SKEW bytes past a
 *                                       16-aligned address  "sendat 0x%08x n=N out=HEX"
 *   sendnull                            FilterSendMessage(h, NULL, 0, ...)
 *   sendmap HEX OUTSIZE OFFSET LEN      FilterSendMessage, then map the section handle at OFFSET
 *                                       of the output and read LEN bytes of it
 *                                       "sendmap 0x%08x view=B data=HEX size=N closed=B"
 *   get SIZE                            synchronous FilterGetMessage
 *                                       "get 0x%08x rl=R id=I data=HEX"
 *   tget SLOT SIZE                      the same on a new thread: "tget SLOT 0x%08x ..." later
 *   cycles N NAME                       N connects, sends and closes: "cycles N 0x%08x"
 *   counts                              "counts handles=H threads=T" of this process
 *   xget SLOT SIZE                      oget with an event on a new thread: "xget-started SLOT"
 *   xexit SLOT                          that thread exits; once the event is set,
 *                                       GetOverlappedResult: "xexit SLOT signalled=1 ok=0 err=995"
 *   xloop COUNT SPIN IDLE               COUNT threads that each issue an overlapped get with an
 *                                       event and exit, SPIN threads keeping the CPUs busy, the
 *                                       exiting ones at SCHED_IDLE if IDLE is 1: "xloop COUNT
 *                                       aborted=A incomplete=I other=O first=..."
 *   tsend HEX OUTSIZE                   FilterSendMessage on a new thread:
 *                                       "tsend 0x%08x n=N out=HEX" later
 *   bind                                CreateIoCompletionPort(h, NULL, 7, 0)  "bind 1"
 *   oget SLOT SIZE                      overlapped FilterGetMessage  "oget SLOT 0x%08x"
 *   wait MS                             GetQueuedCompletionStatus
 *                                       "done SLOT ok=B err=E bytes=N key=K rl=R id=I data=HEX"
 *                                       or "wait ok=B err=E nullovl"
 *   result SLOT                         GetOverlappedResult(wait)  "result SLOT ok=B err=E bytes=N"
 *   cancel SLOT | cancelall | cancelio  CancelIoEx(h, &ov) / CancelIoEx(h, NULL) / CancelIo(h)
 *   reply ID STATUS HEX                 FilterReplyMessage with 16 + len bytes  "reply 0x%08x"
 *   replyshort                          a 15-byte reply buffer: E_INVALIDARG
 *   dup / closedup                      DuplicateHandle, then CloseHandle of the copy
 *   usedup                              the duplicate becomes the handle for later commands
 *   close / closeiocp                   CloseHandle of the port / of the completion port
 *   misc LOADED                         the management functions, "NAME 0x%08x" each, with
 *                                       LOADED one of the daemon's filters
 *   filters                             FilterFindFirst/Next/Close in the three classes
 *   unload NAME                         FilterUnload
 *   badhandle                           the port calls on a handle that is not a port
 *   sleep MS, exit CODE
 */
#include "agent.h"
#include "../include/linux_syscall.h"
#include <tlhelp32.h>

#define SLOTS 64

static HANDLE port = INVALID_HANDLE_VALUE, dup_port = NULL, iocp = NULL;
static struct slot {
    OVERLAPPED ov; /* first: CONTAINING_RECORD finds the slot, as the samples do */
    int index;
    DWORD size;
    unsigned char *buf;
} slots[SLOTS];

static void print_message(const char *prefix, HRESULT hr, const unsigned char *buf, DWORD bytes)
{
    const FILTER_MESSAGE_HEADER *h = (const FILTER_MESSAGE_HEADER *)buf;
    if (hr == S_OK && bytes >= sizeof(*h)) {
        char *hex = malloc(2 * (bytes - sizeof(*h)) + 1);
        out("%s 0x%08lx rl=%lu id=%llu data=%s", prefix, (unsigned long)hr, h->ReplyLength,
            (unsigned long long)h->MessageId, to_hex(buf + sizeof(*h), bytes - sizeof(*h), hex));
        free(hex);
    } else {
        out("%s 0x%08lx", prefix, (unsigned long)hr);
    }
}

struct tget_args {
    int slot;
    DWORD size;
};

struct tsend_args {
    unsigned char in[64];
    DWORD in_len, out_size;
};

/* xget: a thread issues an overlapped get with an event and exits at once; Windows cancels
 * the I/O of an exiting thread on a handle with no completion port (semantics §3.5). */
static HANDLE xget_go, xget_thread_handle;

static DWORD WINAPI xget_thread(void *arg)
{
    struct slot *s = arg;
    FilterGetMessage(port, (PFILTER_MESSAGE_HEADER)s->buf, s->size, &s->ov);
    WaitForSingleObject(xget_go, INFINITE); /* "xexit": the get is pending in the daemon */
    return 0;
}

/* xloop: many exits in a row, each with a get pending.  Wine cancels an exiting thread's I/O
 * when the thread asks wineserver to terminate it, while it still runs; a cancelled get that
 * completes before wineserver has seen the thread die has its completion queued as an APC to
 * that thread, which never runs it: the event is set and the OVERLAPPED never written
 * (Internal stays STATUS_PENDING), unless fltlib cancels the gets itself first.  `spin`
 * threads keep the CPUs busy and, with `idle`, each exiting thread runs at SCHED_IDLE (a raw
 * sched_setscheduler: Wine 8.0 maps no thread priority to Linux's), so that it stalls in that
 * window as on a loaded machine. */
static volatile LONG xloop_spinning;

struct xloop_get {
    OVERLAPPED ov;
    unsigned char buf[64];
    int idle;
};

static DWORD WINAPI xloop_spinner(void *arg)
{
    (void)arg;
    while (xloop_spinning) YieldProcessor();
    return 0;
}

static DWORD WINAPI xloop_thread(void *arg)
{
    struct xloop_get *g = arg;
    if (g->idle) {
        int param = 0; /* struct sched_param */
        lnx_syscall3(144 /* sched_setscheduler */, 0, 5 /* SCHED_IDLE */, (long long)&param);
    }
    return (DWORD)FilterGetMessage(port, (PFILTER_MESSAGE_HEADER)g->buf, sizeof g->buf, &g->ov);
}

/* COUNT exits: "xloop COUNT aborted=A incomplete=I other=O first=WHAT" (WHAT: the first result
 * that was not ERROR_OPERATION_ABORTED, "-" if none). */
static void xloop(long count, int spin, int idle)
{
    HANDLE spinners[8];
    long aborted = 0, incomplete = 0, other = 0;
    char first[96] = "-";
    struct xloop_get g = {.idle = idle};
    g.ov.hEvent = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (spin > 8) spin = 8;
    xloop_spinning = 1;
    for (int i = 0; i < spin; i++)
        spinners[i] = CreateThread(NULL, 0, xloop_spinner, NULL, 0, NULL);
    for (long i = 0; i < count; i++) {
        DWORD bytes = 0, get = 0;
        ResetEvent(g.ov.hEvent);
        HANDLE t = CreateThread(NULL, 0, xloop_thread, &g, 0, NULL);
        /* What an agent sees: the event set, then GetOverlappedResult without waiting. */
        DWORD signalled = WaitForSingleObject(g.ov.hEvent, 20000);
        BOOL ok = GetOverlappedResult(port, &g.ov, &bytes, FALSE);
        DWORD err = ok ? 0 : GetLastError();
        WaitForSingleObject(t, INFINITE);
        GetExitCodeThread(t, &get);
        CloseHandle(t);
        if (!ok && err == ERROR_OPERATION_ABORTED) {
            aborted++;
            continue;
        }
        if (!ok && err == ERROR_IO_INCOMPLETE)
            incomplete++;
        else
            other++;
        if (first[0] == '-')
            snprintf(first, sizeof first, "#%ld:signalled=%d,ok=%d,err=%lu,get=0x%08lx", i,
                     signalled == WAIT_OBJECT_0, ok, err, (unsigned long)get);
        if (signalled != WAIT_OBJECT_0) break; /* a get that never ends ends the loop */
    }
    xloop_spinning = 0;
    for (int i = 0; i < spin; i++) {
        WaitForSingleObject(spinners[i], INFINITE);
        CloseHandle(spinners[i]);
    }
    CloseHandle(g.ov.hEvent);
    out("xloop %ld aborted=%ld incomplete=%ld other=%ld first=%s", count, aborted, incomplete,
        other, first);
}

static DWORD WINAPI tsend_thread(void *arg)
{
    struct tsend_args *a = arg;
    unsigned char buf[256];
    DWORD got = 12345;
    HRESULT hr = FilterSendMessage(port, a->in, a->in_len, buf, a->out_size, &got);
    char hex[2 * sizeof buf + 1];
    for (DWORD i = 0; i < got && i < sizeof buf; i++) wsprintfA(hex + 2 * i, "%02x", buf[i]);
    hex[2 * (got < sizeof buf ? got : 0)] = 0;
    out("tsend 0x%08lx n=%lu out=%s", (unsigned long)hr, (unsigned long)got, hex);
    free(a);
    return 0;
}

static DWORD WINAPI tget_thread(void *arg)
{
    struct tget_args *a = arg;
    unsigned char *buf = calloc(1, a->size + 1);
    HRESULT hr = FilterGetMessage(port, (PFILTER_MESSAGE_HEADER)buf, a->size, NULL);
    char prefix[32];
    const FILTER_MESSAGE_HEADER *h = (const FILTER_MESSAGE_HEADER *)buf;
    snprintf(prefix, sizeof prefix, "tget %d", a->slot);
    /* A synchronous get does not say how many bytes came: the test knows the message. */
    print_message(prefix, hr, buf,
                  hr == S_OK ? (DWORD)(sizeof(*h) + strlen((char *)buf + sizeof(*h))) : 0);
    free(buf);
    free(a);
    return 0;
}

static struct slot *slot_arg(const char *text)
{
    int i = atoi(text);
    return i >= 0 && i < SLOTS ? &slots[i] : NULL;
}

/* The management functions, with `loaded` the name of one of the daemon's filters. */
static void misc(const char *loaded)
{
    HANDLE find = NULL;
    HFILTER filter = NULL;
    DWORD n = 0;
    unsigned char buf[512];
    WCHAR name[64], wloaded[64];
    MultiByteToWideChar(CP_UTF8, 0, loaded, -1, wloaded, 64);
    out("FilterVolumeFindFirst 0x%08lx",
        (unsigned long)FilterVolumeFindFirst(FilterVolumeBasicInformation, buf, sizeof buf, &n,
                                             &find));
    out("FilterVolumeInstanceFindFirst 0x%08lx",
        (unsigned long)FilterVolumeInstanceFindFirst(L"C:", InstanceBasicInformation, buf,
                                                     sizeof buf, &n, &find));
    out("FilterGetDosName 0x%08lx",
        (unsigned long)FilterGetDosName(L"\\Device\\HarddiskVolume1", name, 64));
    out("FilterLoad-loaded 0x%08lx", (unsigned long)FilterLoad(wloaded));
    out("FilterLoad 0x%08lx", (unsigned long)FilterLoad(L"nosuchfilter"));
    out("FilterUnload 0x%08lx", (unsigned long)FilterUnload(L"nosuchfilter"));
    out("FilterInstanceFindFirst-loaded 0x%08lx",
        (unsigned long)FilterInstanceFindFirst(wloaded, InstanceBasicInformation, buf, sizeof buf,
                                               &n, &find));
    out("FilterInstanceFindFirst 0x%08lx",
        (unsigned long)FilterInstanceFindFirst(L"nosuchfilter", InstanceBasicInformation, buf,
                                               sizeof buf, &n, &find));
    out("FilterAttach-loaded 0x%08lx", (unsigned long)FilterAttach(wloaded, L"C:", NULL, 0, NULL));
    out("FilterAttach 0x%08lx", (unsigned long)FilterAttach(L"nosuchfilter", L"C:", NULL, 0, NULL));
    out("FilterDetach 0x%08lx", (unsigned long)FilterDetach(L"nosuchfilter", L"C:", NULL));
    out("FilterCreate 0x%08lx", (unsigned long)FilterCreate(L"nosuchfilter", &filter));
    HRESULT hr = FilterCreate(wloaded, &filter);
    out("FilterCreate-loaded 0x%08lx", (unsigned long)hr);
    if (SUCCEEDED(hr)) {
        PFILTER_FULL_INFORMATION full = (PFILTER_FULL_INFORMATION)buf;
        hr = FilterGetInformation(filter, FilterFullInformation, buf, sizeof buf, &n);
        out("FilterGetInformation 0x%08lx n=%lu name=%.*ls", (unsigned long)hr, n,
            (int)(full->FilterNameLength / sizeof(WCHAR)), full->FilterNameBuffer);
        out("FilterClose 0x%08lx", (unsigned long)FilterClose(filter));
        out("FilterClose-again 0x%08lx", (unsigned long)FilterClose(filter));
    }
    out("FilterFindNext-bad 0x%08lx",
        (unsigned long)FilterFindNext((HANDLE)(ULONG_PTR)0x1234, FilterFullInformation, buf,
                                      sizeof buf, &n));
}

/* FilterFindFirst/Next in each information class: one "filter" line per entry. */
static void list_filters(void)
{
    static const FILTER_INFORMATION_CLASS classes[] = {
        FilterFullInformation, FilterAggregateBasicInformation, FilterAggregateStandardInformation};
    for (int c = 0; c < 3; c++) {
        unsigned char buf[512];
        DWORD n = 0;
        HANDLE find = INVALID_HANDLE_VALUE;
        HRESULT hr = FilterFindFirst(classes[c], buf, 8, &n, &find);
        out("small %d 0x%08lx n=%lu", c, (unsigned long)hr, n);
        for (hr = FilterFindFirst(classes[c], buf, sizeof buf, &n, &find); SUCCEEDED(hr);
             hr = FilterFindNext(find, classes[c], buf, sizeof buf, &n)) {
            const WCHAR *name;
            USHORT len;
            if (classes[c] == FilterFullInformation) {
                name = ((PFILTER_FULL_INFORMATION)buf)->FilterNameBuffer;
                len = ((PFILTER_FULL_INFORMATION)buf)->FilterNameLength;
            } else if (classes[c] == FilterAggregateBasicInformation) {
                PFILTER_AGGREGATE_BASIC_INFORMATION b = (PFILTER_AGGREGATE_BASIC_INFORMATION)buf;
                name = (const WCHAR *)(buf + b->Type.MiniFilter.FilterNameBufferOffset);
                len = b->Type.MiniFilter.FilterNameLength;
            } else {
                PFILTER_AGGREGATE_STANDARD_INFORMATION b =
                    (PFILTER_AGGREGATE_STANDARD_INFORMATION)buf;
                name = (const WCHAR *)(buf + b->Type.MiniFilter.FilterNameBufferOffset);
                len = b->Type.MiniFilter.FilterNameLength;
            }
            out("filter %d %.*ls", c, (int)(len / sizeof(WCHAR)), name);
        }
        out("filters %d 0x%08lx close 0x%08lx", c, (unsigned long)hr,
            (unsigned long)(find == INVALID_HANDLE_VALUE ? 0 : FilterFindClose(find)));
    }
}

int main(void)
{
    char line[1 << 16], cmd[32], a1[1 << 15], a2[64], a3[64];
    static unsigned char data[1 << 15];
    out_init();
    for (int i = 0; i < SLOTS; i++) slots[i].index = i;
    out("ready");
    while (fgets(line, sizeof line, stdin)) {
        a1[0] = a2[0] = a3[0] = 0;
        if (sscanf(line, "%31s %32767s %63s %63s", cmd, a1, a2, a3) < 1) continue;
        if (!strcmp(cmd, "connect")) {
            size_t n = a2[0] ? from_hex(a2, data, sizeof data) : 0;
            WCHAR wname[1024];
            MultiByteToWideChar(CP_UTF8, 0, a1, -1, wname, 1024);
            HRESULT hr = FilterConnectCommunicationPort(wname, a3[0] ? strtoul(a3, NULL, 0) : 0,
                                                        n ? data : NULL, (WORD)n, NULL, &port);
            out("connect 0x%08lx%s", (unsigned long)hr,
                FAILED(hr) && port != INVALID_HANDLE_VALUE ? " handle-not-invalid" : "");
        } else if (!strcmp(cmd, "connectsize")) {
            /* A context of a2 bytes ('c'), for the size limits of §3.1. */
            static unsigned char big[65535];
            WORD n = (WORD)strtoul(a2, NULL, 0);
            WCHAR wname[1024];
            memset(big, 'c', sizeof big);
            MultiByteToWideChar(CP_UTF8, 0, a1, -1, wname, 1024);
            HRESULT hr = FilterConnectCommunicationPort(wname, 0, big, n, NULL, &port);
            out("connectsize 0x%08lx", (unsigned long)hr);
        } else if (!strcmp(cmd, "connectbad")) {
            HANDLE h;
            out("connectbad 0x%08lx",
                (unsigned long)FilterConnectCommunicationPort(L"\\X", 0, NULL, 4, NULL, &h));
        } else if (!strcmp(cmd, "send")) {
            size_t n = from_hex(a1, data, sizeof data);
            DWORD outsize = strtoul(a2, NULL, 0), got = 12345;
            unsigned char *outbuf = calloc(1, outsize + 1);
            HRESULT hr =
                FilterSendMessage(port, data, (DWORD)n, outsize ? outbuf : NULL, outsize, &got);
            char *hex = malloc(2 * (got <= outsize ? got : 0) + 1);
            out("send 0x%08lx n=%lu out=%s", (unsigned long)hr, got,
                to_hex(outbuf, got <= outsize ? got : 0, hex));
            free(hex);
            free(outbuf);
        } else if (!strcmp(cmd, "sendat")) {
            char a4[32] = "0";
            sscanf(line, "%*s %*s %*s %31s", a4);
            size_t n = from_hex(a1, data, sizeof data);
            DWORD outsize = strtoul(a2, NULL, 0), got = 12345, skew = strtoul(a4, NULL, 0) & 15;
            unsigned char *block = calloc(1, outsize + 32);
            unsigned char *outbuf =
                (unsigned char *)(((ULONG_PTR)block + 15) & ~(ULONG_PTR)15) + skew;
            HRESULT hr = FilterSendMessage(port, data, (DWORD)n, outbuf, outsize, &got);
            char *hex = malloc(2 * (got <= outsize ? got : 0) + 1);
            out("sendat 0x%08lx n=%lu out=%s", (unsigned long)hr, got,
                to_hex(outbuf, got <= outsize ? got : 0, hex));
            free(hex);
            free(block);
        } else if (!strcmp(cmd, "sendmap")) {
            char a4[32] = "", a5[32] = "";
            sscanf(line, "%*s %*s %*s %31s %31s", a4, a5);
            size_t n = from_hex(a1, data, sizeof data);
            DWORD outsize = strtoul(a2, NULL, 0), got = 0, offset = strtoul(a4, NULL, 0),
                  len = strtoul(a5, NULL, 0);
            unsigned char *outbuf = calloc(1, outsize + 8);
            HRESULT hr = FilterSendMessage(port, data, (DWORD)n, outbuf, outsize, &got);
            HANDLE section = *(HANDLE *)(outbuf + offset);
            const unsigned char *view = MapViewOfFile(section, FILE_MAP_READ, 0, 0, 0);
            MEMORY_BASIC_INFORMATION info = {0};
            char *hex = malloc(2 * len + 1);
            hex[0] = 0;
            if (view) {
                VirtualQuery(view, &info, sizeof info);
                to_hex(view, len, hex);
                UnmapViewOfFile(view);
            }
            out("sendmap 0x%08lx view=%d data=%s size=%lu closed=%d", (unsigned long)hr,
                view != NULL, hex, (unsigned long)info.RegionSize, CloseHandle(section));
            free(hex);
            free(outbuf);
        } else if (!strcmp(cmd, "sendnull")) {
            DWORD got;
            out("sendnull 0x%08lx", (unsigned long)FilterSendMessage(port, NULL, 0, NULL, 0, &got));
        } else if (!strcmp(cmd, "get")) {
            DWORD size = strtoul(a1, NULL, 0);
            unsigned char *buf = calloc(1, size + 16);
            HRESULT hr =
                FilterGetMessage(port, size ? (PFILTER_MESSAGE_HEADER)buf : NULL, size, NULL);
            print_message("get", hr, buf, hr == S_OK ? (DWORD)(16 + strlen((char *)buf + 16)) : 0);
            free(buf);
        } else if (!strcmp(cmd, "tget")) {
            struct tget_args *a = malloc(sizeof *a);
            a->slot = atoi(a1);
            a->size = strtoul(a2, NULL, 0);
            CloseHandle(CreateThread(NULL, 0, tget_thread, a, 0, NULL));
            out("tget-started %d", a->slot);
        } else if (!strcmp(cmd, "tsend")) {
            struct tsend_args *a = calloc(1, sizeof *a);
            a->in_len = (DWORD)from_hex(a1, a->in, sizeof a->in);
            a->out_size = strtoul(a2, NULL, 0);
            if (a->out_size > 256) a->out_size = 256;
            CloseHandle(CreateThread(NULL, 0, tsend_thread, a, 0, NULL));
            out("tsend-started");
        } else if (!strcmp(cmd, "bind")) {
            iocp = CreateIoCompletionPort(port, NULL, 7, 0);
            out("bind %d", iocp != NULL);
        } else if (!strcmp(cmd, "oget")) {
            struct slot *s = slot_arg(a1);
            if (!s) {
                out("oget bad-slot");
                continue;
            }
            s->size = strtoul(a2, NULL, 0);
            free(s->buf);
            s->buf = calloc(1, s->size + 1);
            memset(&s->ov, 0, sizeof s->ov);
            HRESULT hr = FilterGetMessage(port, (PFILTER_MESSAGE_HEADER)s->buf, s->size, &s->ov);
            out("oget %d 0x%08lx", s->index, (unsigned long)hr);
        } else if (!strcmp(cmd, "xget")) {
            struct slot *s = slot_arg(a1);
            if (!s) {
                out("xget bad-slot");
                continue;
            }
            s->size = strtoul(a2, NULL, 0);
            free(s->buf);
            s->buf = calloc(1, s->size + 1);
            memset(&s->ov, 0, sizeof s->ov);
            s->ov.hEvent = CreateEventW(NULL, TRUE, FALSE, NULL);
            xget_go = CreateEventW(NULL, TRUE, FALSE, NULL);
            xget_thread_handle = CreateThread(NULL, 0, xget_thread, s, 0, NULL);
            out("xget-started %d", s->index);
        } else if (!strcmp(cmd, "xexit")) {
            struct slot *s = slot_arg(a1);
            if (!s || !xget_thread_handle) {
                out("xexit bad-slot");
                continue;
            }
            SetEvent(xget_go);
            WaitForSingleObject(xget_thread_handle, INFINITE);
            CloseHandle(xget_thread_handle);
            CloseHandle(xget_go);
            xget_thread_handle = NULL;
            /* What an agent sees once the event is set: no wait beyond it. */
            DWORD signalled = WaitForSingleObject(s->ov.hEvent, 20000), bytes = 0;
            BOOL ok = GetOverlappedResult(port, &s->ov, &bytes, FALSE);
            out("xexit %d signalled=%d ok=%d err=%lu", s->index, signalled == WAIT_OBJECT_0, ok,
                ok ? 0 : GetLastError());
            CloseHandle(s->ov.hEvent);
            s->ov.hEvent = NULL;
        } else if (!strcmp(cmd, "xloop")) {
            xloop(strtol(a1, NULL, 0), atoi(a2), atoi(a3));
        } else if (!strcmp(cmd, "cycles")) {
            /* COUNT connects and closes of port a2, with a send on each: "cycles N 0x%08x"
             * (the first failure, or 0). */
            long count = strtol(a1, NULL, 0);
            WCHAR wname[1024];
            HRESULT first = S_OK;
            unsigned char buf[16];
            DWORD got;
            MultiByteToWideChar(CP_UTF8, 0, a2, -1, wname, 1024);
            for (long i = 0; i < count && first == S_OK; i++) {
                HANDLE h;
                first = FilterConnectCommunicationPort(wname, 0, NULL, 0, NULL, &h);
                if (first != S_OK) break;
                first = FilterSendMessage(h, "c", 1, buf, sizeof buf, &got);
                CloseHandle(h);
            }
            out("cycles %ld 0x%08lx", count, (unsigned long)first);
        } else if (!strcmp(cmd, "counts")) {
            /* This process's handles and threads, as Windows counts them. */
            DWORD handles = 0, threads = 0, me = GetCurrentProcessId();
            GetProcessHandleCount(GetCurrentProcess(), &handles);
            HANDLE snap = CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0);
            THREADENTRY32 te;
            te.dwSize = sizeof te;
            if (snap != INVALID_HANDLE_VALUE && Thread32First(snap, &te)) {
                do threads += te.th32OwnerProcessID == me;
                while (Thread32Next(snap, &te));
            }
            if (snap != INVALID_HANDLE_VALUE) CloseHandle(snap);
            out("counts handles=%lu threads=%lu", (unsigned long)handles, (unsigned long)threads);
        } else if (!strcmp(cmd, "wait")) {
            DWORD bytes = 0;
            ULONG_PTR key = 0;
            LPOVERLAPPED ov = NULL;
            BOOL ok = GetQueuedCompletionStatus(iocp, &bytes, &key, &ov, strtoul(a1, NULL, 0));
            DWORD err = ok ? 0 : GetLastError();
            if (!ov) {
                out("wait ok=%d err=%lu nullovl", ok, err);
                continue;
            }
            struct slot *s = CONTAINING_RECORD(ov, struct slot, ov);
            char prefix[160];
            snprintf(prefix, sizeof prefix, "done %d ok=%d err=%lu bytes=%lu key=%lu", s->index, ok,
                     err, bytes, (unsigned long)key);
            print_message(prefix, ok ? S_OK : E_FAIL, s->buf, bytes);
        } else if (!strcmp(cmd, "result")) {
            struct slot *s = slot_arg(a1);
            DWORD bytes = 0;
            BOOL ok = GetOverlappedResult(port, &s->ov, &bytes, TRUE);
            out("result %d ok=%d err=%lu bytes=%lu", s->index, ok, ok ? 0 : GetLastError(), bytes);
        } else if (!strcmp(cmd, "cancel")) {
            struct slot *s = slot_arg(a1);
            BOOL ok = CancelIoEx(port, &s->ov);
            out("cancel %d err=%lu", ok, ok ? 0 : GetLastError());
        } else if (!strcmp(cmd, "cancelall")) {
            BOOL ok = CancelIoEx(port, NULL);
            out("cancelall %d err=%lu", ok, ok ? 0 : GetLastError());
        } else if (!strcmp(cmd, "cancelio")) {
            BOOL ok = CancelIo(port);
            out("cancelio %d", ok);
        } else if (!strcmp(cmd, "reply")) {
            size_t n = from_hex(a3, data + 16, sizeof data - 16);
            PFILTER_REPLY_HEADER r = (PFILTER_REPLY_HEADER)data;
            r->MessageId = strtoull(a1, NULL, 0);
            r->Status = (NTSTATUS)strtoul(a2, NULL, 0);
            out("reply 0x%08lx", (unsigned long)FilterReplyMessage(port, r, (DWORD)(16 + n)));
        } else if (!strcmp(cmd, "replyshort")) {
            out("replyshort 0x%08lx",
                (unsigned long)FilterReplyMessage(port, (PFILTER_REPLY_HEADER)data, 15));
        } else if (!strcmp(cmd, "dup")) {
            BOOL ok = DuplicateHandle(GetCurrentProcess(), port, GetCurrentProcess(), &dup_port, 0,
                                      FALSE, DUPLICATE_SAME_ACCESS);
            out("dup %d", ok);
        } else if (!strcmp(cmd, "usedup")) {
            HANDLE old = port;
            port = dup_port;
            dup_port = old;
            out("usedup 1");
        } else if (!strcmp(cmd, "closedup")) {
            out("closedup %d", CloseHandle(dup_port));
        } else if (!strcmp(cmd, "close")) {
            out("close %d", CloseHandle(port));
        } else if (!strcmp(cmd, "closeiocp")) {
            out("closeiocp %d", CloseHandle(iocp));
        } else if (!strcmp(cmd, "misc")) {
            misc(a1);
        } else if (!strcmp(cmd, "filters")) {
            list_filters();
        } else if (!strcmp(cmd, "unload")) {
            WCHAR wname[256];
            MultiByteToWideChar(CP_UTF8, 0, a1, -1, wname, 256);
            out("unload 0x%08lx", (unsigned long)FilterUnload(wname));
        } else if (!strcmp(cmd, "badhandle")) {
            HANDLE ev = CreateEventW(NULL, FALSE, FALSE, NULL);
            DWORD got;
            unsigned char buf[64];
            OVERLAPPED ov = {0};
            out("badsend 0x%08lx", (unsigned long)FilterSendMessage(ev, "x", 1, buf, 64, &got));
            out("badget 0x%08lx",
                (unsigned long)FilterGetMessage(ev, (PFILTER_MESSAGE_HEADER)buf, 64, &ov));
            out("badget-null 0x%08lx", (unsigned long)FilterGetMessage(port, NULL, 64, &ov));
            out("badget-zero 0x%08lx",
                (unsigned long)FilterGetMessage(port, (PFILTER_MESSAGE_HEADER)buf, 0, NULL));
            out("badsend-closed 0x%08lx",
                (unsigned long)FilterSendMessage((HANDLE)(ULONG_PTR)0x1234, "x", 1, buf, 64, &got));
            CloseHandle(ev);
        } else if (!strcmp(cmd, "closereuse")) {
            /* CloseHandle, then a new object that takes the freed value (the lowest free
             * one, in Wine as in Windows), then a send on the old value. */
            HANDLE old = port;
            DWORD got;
            unsigned char buf[64];
            BOOL closed = CloseHandle(port);
            HANDLE ev = CreateEventW(NULL, FALSE, FALSE, NULL);
            out("closereuse %d reused=%d send 0x%08lx", closed, ev == old,
                (unsigned long)FilterSendMessage(old, "x", 1, buf, 64, &got));
            CloseHandle(ev);
        } else if (!strcmp(cmd, "sleep")) {
            Sleep(strtoul(a1, NULL, 0));
            out("slept");
        } else if (!strcmp(cmd, "exit")) {
            out("bye");
            ExitProcess(strtoul(a1, NULL, 0));
        } else {
            out("unknown %s", cmd);
        }
    }
    out("eof");
    return 0;
}
