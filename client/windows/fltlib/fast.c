/*
 * fltlib.dll's direct path: FilterSendMessage and FilterReplyMessage without an IOCTL.
 *
 * Through fltemu.sys a call costs an IOCTL (the agent, wineserver, winedevice.exe's dispatch
 * thread, the driver's reader thread and back: about seven wineserver requests and two process
 * wake-ups, docs/wine.md).  A send or a reply needs nothing of Wine's I/O manager: it is
 * synchronous, has no completion packet (semantics §3.2) and no cancel routine.  So, once the
 * driver has connected a handle, the DLL opens a Unix socket of its own to the daemon (raw
 * Linux system calls, as the driver does), joins the handle's connection with the token the
 * driver received (protocol §5b), and sends and replies over it.  Its threads wait on a
 * condition variable, which Wine implements with futexes: no wineserver request at all, but
 * the one that checks the handle (handle_is_ours).
 *
 * Gets stay on the device: an overlapped get must complete through Wine's I/O manager (IOCP
 * packets, events, CancelIo(Ex), the close of the handle, a thread's exit), and a synchronous
 * get must be reachable by CancelIoEx from another thread.  A handle the DLL did not connect
 * itself (a duplicate, an inherited one) and any handle whose direct socket has ended take
 * the device path, which gives the same answers.
 */
#define WIN32_LEAN_AND_MEAN
#define WIN32_NO_STATUS
#include <windows.h>
#undef WIN32_NO_STATUS
#include <ntstatus.h>
#include <winternl.h>

#include "../include/fltemu_ioctl.h"
#include "../include/linux_syscall.h"
#include "../include/wire.h"
#include "fltlib_private.h"

/* Seconds the attach handshake may take before the handle keeps the device path only. */
#define ATTACH_TIMEOUT_SECONDS 5
/* How long a connect waits for its reader thread to run (see wait_for_reader). */
#define READER_START_WAIT_MS 2000

/* A Section frame kept with its send until the result (protocol §7.1). */
struct fast_section {
    struct fast_section *next;
    ULONG offset;
    ULONG length;
    unsigned char data[];
};

/* One call waiting for its result. */
struct fast_call {
    struct fast_call *next;
    unsigned long long rid;
    CONDITION_VARIABLE wake;
    BOOL done;
    NTSTATUS status;
    unsigned char *out; /* a send's output buffer, written by the caller's own thread */
    ULONG out_len;
    ULONG got;
    unsigned char *answer; /* the output the reader received (HeapAlloc), `got` bytes */
    struct fast_section *sections;
    BOOL no_memory; /* part of the answer could not be kept: the call fails */
};

struct fast_conn {
    struct fast_conn *next; /* in g_conns */
    volatile LONG refs;     /* the table's, the reader's, each call's */
    HANDLE handle;          /* the port handle it was connected for */
    int fd;
    SRWLOCK lock;       /* calls, next_rid, dead, disconnected */
    SRWLOCK write_lock; /* one frame at a time on the socket */
    struct fast_call *calls;
    unsigned long long next_rid;
    unsigned long long max_message;
    BOOL dead;           /* the socket ended: the device path answers */
    HMODULE module;      /* the reader's reference to this DLL */
    BOOL disconnected;   /* the filter ended the connection: calls fail at once */
    BOOL reader_started; /* under lock, with reader_start */
    CONDITION_VARIABLE reader_start;
};

static SRWLOCK g_conns_lock = SRWLOCK_INIT;
static struct fast_conn *g_conns;
/* FLTEMU_UNCHECKED_HANDLES=1: skip handle_is_ours, for load tests of agents that never use a
 * port handle after closing it.  Read once, when the first handle connects. */
static int g_unchecked_handles = -1;
/* FLTEMU_FAULT_ALLOC_LIMIT=N (tests only): the reader's allocations of more than N bytes fail,
 * as when memory runs out.  Read once, when the first handle connects; 0: no limit. */
static unsigned long long g_fault_alloc_limit;

/* HeapAlloc for what the reader keeps of a frame (see g_fault_alloc_limit). */
static void *reader_alloc(unsigned long long size)
{
    if ((g_fault_alloc_limit && size > g_fault_alloc_limit) || size > (SIZE_T)-1) return NULL;
    return HeapAlloc(GetProcessHeap(), 0, (SIZE_T)size);
}

static void conn_release(struct fast_conn *c)
{
    if (InterlockedDecrement(&c->refs) == 0) {
        lnx_close(c->fd);
        HeapFree(GetProcessHeap(), 0, c);
    }
}

/* Takes `c` out of the table (a later call on its handle value takes the device path). */
static void conn_unlist(struct fast_conn *c)
{
    BOOL listed = FALSE;
    AcquireSRWLockExclusive(&g_conns_lock);
    for (struct fast_conn **p = &g_conns; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            listed = TRUE;
            break;
        }
    }
    ReleaseSRWLockExclusive(&g_conns_lock);
    if (listed) conn_release(c);
}

/* Is `h` still the handle the DLL connected, with the access fltlib opens ports with?  One
 * wineserver request: a handle closed since, or whose value now names another object, fails
 * here and takes the device path, which answers as Windows does (0x80070006).  Without it, a
 * call made right after CloseHandle, before the driver's IRP_MJ_CLOSE reaches the daemon, or
 * on a reused value while a duplicate keeps the connection open, would still be carried. */
static BOOL handle_is_ours(HANDLE h)
{
    OBJECT_BASIC_INFORMATION info;
    if (!NT_SUCCESS(NtQueryObject(h, ObjectBasicInformation, &info, sizeof info, NULL)))
        return FALSE;
    return info.GrantedAccess == FLTEMU_PORT_ACCESS;
}

/* The live direct connection of handle `h`, with a reference, or NULL. */
static struct fast_conn *conn_for(HANDLE h)
{
    struct fast_conn *found = NULL;
    AcquireSRWLockShared(&g_conns_lock);
    for (struct fast_conn *c = g_conns; c; c = c->next) {
        if (c->handle == h) {
            found = c;
            InterlockedIncrement(&c->refs);
            break;
        }
    }
    ReleaseSRWLockShared(&g_conns_lock);
    if (found && !g_unchecked_handles && !handle_is_ours(h)) {
        conn_release(found);
        found = NULL;
    }
    return found;
}

static BOOL write_frame(struct fast_conn *c, const unsigned char *frame, unsigned long long len)
{
    BOOL ok = TRUE;
    AcquireSRWLockExclusive(&c->write_lock);
    while (len) {
        long long n = lnx_send(c->fd, frame, len);
        if (n <= 0) {
            ok = FALSE;
            break;
        }
        frame += n;
        len -= (unsigned long long)n;
    }
    ReleaseSRWLockExclusive(&c->write_lock);
    /* A socket that cannot be written is ended: the reader sees EOF and fails every call. */
    if (!ok) lnx_shutdown(c->fd, LNX_SHUT_RDWR);
    return ok;
}

/* The call with this rid, under c->lock. */
static struct fast_call *find_call(struct fast_conn *c, unsigned long long rid)
{
    for (struct fast_call *call = c->calls; call; call = call->next)
        if (call->rid == rid) return call;
    return NULL;
}

static void finish(struct fast_call *call, NTSTATUS status)
{
    call->status = status;
    call->done = TRUE;
    WakeConditionVariable(&call->wake);
}

static void on_result(struct fast_conn *c, const struct wire_result *r)
{
    AcquireSRWLockExclusive(&c->lock);
    if (r->tag == WIRE_DISCONNECTED) {
        c->disconnected = TRUE;
        ReleaseSRWLockExclusive(&c->lock);
        return;
    }
    struct fast_call *call = find_call(c, r->rid);
    if (!call) {
        ReleaseSRWLockExclusive(&c->lock);
        return;
    }
    if (r->tag == WIRE_SECTION) {
        struct fast_section *s = NULL;
        if (r->data_len <= 0xFFFFFFFFull) s = reader_alloc(sizeof(*s) + r->data_len);
        if (!s) {
            call->no_memory = TRUE; /* the send fails rather than hand out a placeholder */
        } else {
            s->offset = r->offset;
            s->length = (ULONG)r->data_len;
            CopyMemory(s->data, r->data, r->data_len);
            s->next = call->sections;
            call->sections = s;
        }
    } else if (r->tag == WIRE_SEND_RESULT) {
        NTSTATUS status = (NTSTATUS)r->status;
        if (call->no_memory) {
            status = STATUS_INSUFFICIENT_RESOURCES;
        } else if (!NT_ERROR(status)) {
            /* Kept for the caller, which copies it into its buffer: a bad output pointer
             * must fault in the caller's thread, not in the reader every call relies on. */
            ULONG n = r->data_len <= call->out_len ? (ULONG)r->data_len : call->out_len;
            call->answer = n ? reader_alloc(n) : NULL;
            if (n && !call->answer)
                status = STATUS_INSUFFICIENT_RESOURCES;
            else if (n)
                CopyMemory(call->answer, r->data, n);
            call->got = call->answer ? n : 0;
        }
        finish(call, status);
    } else if (r->tag == WIRE_REPLY_RESULT) {
        /* The filter closed this connection: later calls fail at once (protocol §9). */
        if (r->status == (unsigned)STATUS_PORT_DISCONNECTED) c->disconnected = TRUE;
        finish(call, (NTSTATUS)r->status);
    }
    ReleaseSRWLockExclusive(&c->lock);
}

/* A frame of `len` bytes that the reader has no memory for: only the call it answers fails
 * (STATUS_INSUFFICIENT_RESOURCES), the others and the connection go on.  A frame the DLL may
 * not keep whole is a SendResult or a Section, whose rid follows the tag, so the first bytes
 * name the call; the rest is read and dropped.  FALSE when the socket ended meanwhile. */
static BOOL drop_frame(struct fast_conn *c, unsigned char *buf, unsigned long long size,
                       unsigned long long len)
{
    unsigned long long first = len < size ? len : size;
    if (!lnx_read_full(c->fd, buf, first)) return FALSE;
    struct wire_in in = {buf, buf + first, 0};
    unsigned n = wire_get_array(&in);
    unsigned tag = (unsigned)wire_get_uint(&in, 0xFF);
    unsigned long long rid = wire_get_uint(&in, ~0ull);
    for (unsigned long long left = len - first; left;) {
        unsigned long long chunk = left < size ? left : size;
        if (!lnx_read_full(c->fd, buf, chunk)) return FALSE;
        left -= chunk;
    }
    if (in.bad || n < 3 || (tag != WIRE_SEND_RESULT && tag != WIRE_SECTION)) return TRUE;
    AcquireSRWLockExclusive(&c->lock);
    struct fast_call *call = find_call(c, rid);
    if (call && !call->done) {
        call->no_memory = TRUE;
        if (tag == WIRE_SEND_RESULT) finish(call, STATUS_INSUFFICIENT_RESOURCES);
    }
    ReleaseSRWLockExclusive(&c->lock);
    return TRUE;
}

/* Reads the daemon's answers and hands each to its call.  When the socket ends (the handle
 * was closed, the filter unloaded, the daemon stopped) every call in flight fails as on a
 * disconnected port, and the handle's later calls take the device path. */
static DWORD WINAPI reader_main(void *arg)
{
    struct fast_conn *c = arg;
    NTSTATUS end = STATUS_PORT_DISCONNECTED;
    unsigned char small[512];
    AcquireSRWLockExclusive(&c->lock);
    c->reader_started = TRUE;
    ReleaseSRWLockExclusive(&c->lock);
    WakeAllConditionVariable(&c->reader_start);
    for (;;) {
        unsigned char hdr[4];
        if (!lnx_read_full(c->fd, hdr, 4)) break;
        unsigned long long len =
            hdr[0] | (hdr[1] << 8) | (hdr[2] << 16) | ((unsigned long long)hdr[3] << 24);
        if (len == 0 || len > c->max_message + WIRE_FRAME_OVERHEAD) break;
        unsigned char *body = len <= sizeof(small) ? small : reader_alloc(len);
        if (!body) {
            if (!drop_frame(c, small, sizeof small, len)) break;
            continue;
        }
        BOOL ok = lnx_read_full(c->fd, body, len);
        struct wire_result r;
        if (ok && wire_decode(body, len, &r) == 0) {
            if (r.tag == WIRE_GOODBYE) {
                if (r.status) end = (NTSTATUS)r.status;
                ok = FALSE;
            } else {
                on_result(c, &r);
            }
        } else {
            ok = FALSE;
        }
        if (body != small) HeapFree(GetProcessHeap(), 0, body);
        if (!ok) break;
    }
    conn_unlist(c);
    AcquireSRWLockExclusive(&c->lock);
    c->dead = TRUE;
    for (struct fast_call *call = c->calls; call; call = call->next)
        if (!call->done) finish(call, end);
    ReleaseSRWLockExclusive(&c->lock);
    lnx_shutdown(c->fd, LNX_SHUT_RDWR);
    HMODULE module = c->module;
    conn_release(c);
    FreeLibraryAndExitThread(module, 0);
}

/* Sends one request built in `frame` and waits for its result.  FALSE when the connection
 * had already ended (the caller then takes the device path). */
static BOOL call_daemon(struct fast_conn *c, struct fast_call *call, unsigned char *frame,
                        struct wire_out *o)
{
    InitializeConditionVariable(&call->wake);
    call->done = FALSE;
    call->sections = NULL;
    call->answer = NULL;
    call->got = 0;
    call->no_memory = FALSE;
    AcquireSRWLockExclusive(&c->lock);
    if (c->dead) {
        ReleaseSRWLockExclusive(&c->lock);
        return FALSE;
    }
    if (c->disconnected) {
        ReleaseSRWLockExclusive(&c->lock);
        call->status = STATUS_PORT_DISCONNECTED;
        return TRUE;
    }
    call->next = c->calls;
    c->calls = call;
    ReleaseSRWLockExclusive(&c->lock);
    write_frame(c, frame, wire_finish(o, frame));
    AcquireSRWLockExclusive(&c->lock);
    while (!call->done) SleepConditionVariableSRW(&call->wake, &c->lock, INFINITE, 0);
    for (struct fast_call **p = &c->calls; *p; p = &(*p)->next) {
        if (*p == call) {
            *p = call->next;
            break;
        }
    }
    ReleaseSRWLockExclusive(&c->lock);
    return TRUE;
}

static unsigned long long take_rid(struct fast_conn *c)
{
    unsigned long long rid;
    AcquireSRWLockExclusive(&c->lock);
    rid = ++c->next_rid;
    ReleaseSRWLockExclusive(&c->lock);
    return rid;
}

/* A section of `s`'s content in this process, opened for reading as avscan's driver opens
 * one for its user program (protocol §7.1); its handle value, or 0. */
static ULONGLONG open_section(const struct fast_section *s)
{
    HANDLE section, readonly = NULL;
    void *view;
    if (!s->length) return 0;
    section = CreateFileMappingW(INVALID_HANDLE_VALUE, NULL, PAGE_READWRITE, 0, s->length, NULL);
    if (!section) return 0;
    view = MapViewOfFile(section, FILE_MAP_WRITE, 0, 0, s->length);
    if (view) {
        CopyMemory(view, s->data, s->length);
        UnmapViewOfFile(view);
        if (!DuplicateHandle(GetCurrentProcess(), section, GetCurrentProcess(), &readonly,
                             SECTION_MAP_READ | SECTION_QUERY, FALSE, 0))
            readonly = NULL;
    }
    CloseHandle(section);
    return (ULONGLONG)(ULONG_PTR)readonly;
}

/* What start_call decided. */
enum call_start {
    CALL_DEVICE,  /* no direct path for this handle: the caller issues the IOCTL */
    CALL_REFUSED, /* fails at once with *status */
    CALL_GO,      /* *c (a reference) and *frame are the caller's until end_call */
};

/* The connection and a frame buffer (`stack` when the request fits) for a request carrying
 * `payload` bytes on handle `h`. */
static enum call_start start_call(HANDLE h, unsigned long long payload, unsigned char *stack,
                                  unsigned long long stack_size, struct fast_conn **c,
                                  unsigned char **frame, NTSTATUS *status)
{
    *c = conn_for(h);
    if (!*c) return CALL_DEVICE;
    if (payload > (*c)->max_message) {
        /* Over the daemon's limit: the call fails as the daemon would fail it (protocol §14). */
        conn_release(*c);
        *status = STATUS_INSUFFICIENT_RESOURCES;
        return CALL_REFUSED;
    }
    unsigned long long size = WIRE_REQUEST_MAX(payload);
    *frame = size <= stack_size ? stack : HeapAlloc(GetProcessHeap(), 0, size);
    if (!*frame) {
        conn_release(*c);
        return CALL_DEVICE;
    }
    return CALL_GO;
}

static void end_call(struct fast_conn *c, unsigned char *frame, unsigned char *stack)
{
    if (frame != stack) HeapFree(GetProcessHeap(), 0, frame);
    conn_release(c);
}

BOOL fast_send(HANDLE h, const void *in, ULONG in_len, void *out, ULONG out_len, NTSTATUS *status,
               ULONG *returned)
{
    struct fast_conn *c;
    struct fast_call call;
    unsigned char stack_frame[256], *frame;
    *returned = 0;
    switch (start_call(h, in_len, stack_frame, sizeof stack_frame, &c, &frame, status)) {
    case CALL_DEVICE:
        return FALSE;
    case CALL_REFUSED:
        return TRUE;
    case CALL_GO:
        break;
    }
    struct wire_out o = {frame + 4};
    wire_put_array(&o, 5);
    wire_put_uint(&o, WIRE_SEND_REQUEST);
    wire_put_uint(&o, call.rid = take_rid(c));
    wire_put_bin(&o, in, in_len);
    wire_put_uint(&o, out ? out_len : 0);
    /* The output buffer's low address bits, for MessageNotify's alignment checks (§7.1). */
    wire_put_uint(&o, (ULONG_PTR)out & 0xFF);
    call.out = out;
    call.out_len = out ? out_len : 0;
    BOOL handled = call_daemon(c, &call, frame, &o);
    if (handled) {
        *status = call.status;
        *returned = NT_ERROR(call.status) ? 0 : call.got;
        if (call.answer) {
            CopyMemory(out, call.answer, call.got);
            HeapFree(GetProcessHeap(), 0, call.answer);
        }
        for (struct fast_section *s = call.sections; s;) {
            struct fast_section *next = s->next;
            if (!NT_ERROR(call.status) && s->offset + 8ull <= call.got) {
                ULONGLONG handle = open_section(s);
                if (handle) CopyMemory((unsigned char *)out + s->offset, &handle, 8);
            }
            HeapFree(GetProcessHeap(), 0, s);
            s = next;
        }
    }
    end_call(c, frame, stack_frame);
    return handled;
}

BOOL fast_reply(HANDLE h, const void *reply, ULONG len, NTSTATUS *status)
{
    struct fast_conn *c;
    struct fast_call call;
    unsigned char stack_frame[256], *frame;
    const unsigned char *in = reply;
    switch (start_call(h, len - 16, stack_frame, sizeof stack_frame, &c, &frame, status)) {
    case CALL_DEVICE:
        return FALSE;
    case CALL_REFUSED:
        return TRUE;
    case CALL_GO:
        break;
    }
    /* FILTER_REPLY_HEADER {Status @0, MessageId @8} + payload. */
    struct wire_out o = {frame + 4};
    wire_put_array(&o, 5);
    wire_put_uint(&o, WIRE_REPLY_REQUEST);
    wire_put_uint(&o, call.rid = take_rid(c));
    wire_put_uint(&o, *(const ULONGLONG *)(in + 8));
    wire_put_uint(&o, *(const ULONG *)in);
    wire_put_bin(&o, in + 16, len - 16);
    call.out = NULL;
    call.out_len = 0;
    BOOL handled = call_daemon(c, &call, frame, &o);
    if (handled) *status = call.status;
    end_call(c, frame, stack_frame);
    return handled;
}

/* Reads one frame during the handshake into `body` (at most `size` bytes). */
static BOOL read_handshake(int fd, unsigned char *body, unsigned long long size,
                           struct wire_result *r)
{
    unsigned char hdr[4];
    if (!lnx_read_full(fd, hdr, 4)) return FALSE;
    unsigned long long len =
        hdr[0] | (hdr[1] << 8) | (hdr[2] << 16) | ((unsigned long long)hdr[3] << 24);
    return len && len <= size && lnx_read_full(fd, body, len) && wire_decode(body, len, r) == 0;
}

/* Waits (at most READER_START_WAIT_MS) until the reader thread of `c` runs.  Wine 8.0 sets a
 * new thread up with wineserver after CreateThread has returned; an agent that exits right
 * after connecting would end the process in the middle of that, and Wine then prints "wine
 * client error: ... sendmsg: Socket operation on non-socket" on the agent's output. */
static void wait_for_reader(struct fast_conn *c)
{
    DWORD start = GetTickCount();
    AcquireSRWLockExclusive(&c->lock);
    while (!c->reader_started) {
        DWORD waited = GetTickCount() - start;
        if (waited >= READER_START_WAIT_MS ||
            !SleepConditionVariableSRW(&c->reader_start, &c->lock, READER_START_WAIT_MS - waited,
                                       0))
            break;
    }
    ReleaseSRWLockExclusive(&c->lock);
}

/* Takes the connection listed under handle value `h` out of the table: it belongs to a
 * handle closed since, whose value a new connect now has. */
static void forget_handle(HANDLE h)
{
    struct fast_conn *stale = NULL;
    AcquireSRWLockExclusive(&g_conns_lock);
    for (struct fast_conn **p = &g_conns; *p; p = &(*p)->next) {
        if ((*p)->handle == h) {
            stale = *p;
            *p = stale->next;
            break;
        }
    }
    ReleaseSRWLockExclusive(&g_conns_lock);
    if (stale) conn_release(stale);
}

void fast_attach(HANDLE h, const char *path, int trust_uid, const FLTEMU_CONNECT_OUT *out)
{
    static const unsigned char no_token[WIRE_ATTACH_TOKEN_BYTES];
    struct lnx_sockaddr_un addr;
    struct wire_result r;
    unsigned char frame[64], body[256];
    int path_len = lstrlenA(path);
    /* First, whatever happens below: the value may not keep naming an old connection. */
    forget_handle(h);
    if (!memcmp(out->token, no_token, sizeof no_token) || path_len > (int)FLTEMU_MAX_SOCKET_PATH)
        return;
    if (g_unchecked_handles < 0) {
        char flag[4];
        DWORD n = GetEnvironmentVariableA("FLTEMU_UNCHECKED_HANDLES", flag, sizeof flag);
        g_unchecked_handles = n == 1 && flag[0] == '1';
        char limit[24];
        n = GetEnvironmentVariableA("FLTEMU_FAULT_ALLOC_LIMIT", limit, sizeof limit);
        for (DWORD i = 0; n < sizeof limit && i < n && limit[i] >= '0' && limit[i] <= '9'; i++)
            g_fault_alloc_limit = g_fault_alloc_limit * 10 + (unsigned)(limit[i] - '0');
    }

    long long fd = lnx_socket_unix();
    if (fd < 0) return;
    ZeroMemory(&addr, sizeof addr);
    addr.sun_family = LNX_AF_UNIX;
    CopyMemory(addr.sun_path, path, path_len);
    lnx_set_timeouts((int)fd, ATTACH_TIMEOUT_SECONDS);
    struct wire_out o = {frame + 4};
    wire_put_array(&o, 4);
    wire_put_uint(&o, WIRE_ATTACH);
    wire_put_uint(&o, WIRE_PROTOCOL_VERSION);
    wire_put_bin(&o, out->token, WIRE_ATTACH_TOKEN_BYTES);
    wire_put_uint(&o, WIRE_OPTION_DISCONNECT_NOTICE | WIRE_OPTION_SECTIONS);
    unsigned long long len = wire_finish(&o, frame);
    if (lnx_connect((int)fd, &addr, 2 + path_len) < 0 ||
        !lnx_trusted_peer(lnx_peer_uid((int)fd), trust_uid) ||
        lnx_send((int)fd, frame, len) != (long long)len ||
        !read_handshake((int)fd, body, sizeof body, &r) || r.tag != WIRE_CONNECT_RESULT ||
        r.status != 0) {
        /* No direct path: every call of this handle takes the device path, as before. */
        lnx_close((int)fd);
        return;
    }
    lnx_set_timeouts((int)fd, 0); /* the reader waits as long as the connection lives */

    struct fast_conn *c = HeapAlloc(GetProcessHeap(), HEAP_ZERO_MEMORY, sizeof *c);
    if (!c) {
        lnx_close((int)fd);
        return;
    }
    c->refs = 2; /* the table's and the reader's */
    c->handle = h;
    c->fd = (int)fd;
    InitializeSRWLock(&c->lock);
    InitializeSRWLock(&c->write_lock);
    InitializeConditionVariable(&c->reader_start);
    c->max_message = r.max_message ? r.max_message : out->max_message;
    /* The reader runs this DLL's code as long as the connection lives, which may be after
     * the agent's CloseHandle and FreeLibrary: it holds a reference to the module, and lets
     * it go with FreeLibraryAndExitThread. */
    HMODULE self;
    if (!GetModuleHandleExW(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS, (LPCWSTR)(void *)reader_main,
                            &self)) {
        lnx_close((int)fd);
        HeapFree(GetProcessHeap(), 0, c);
        return;
    }
    c->module = self;
    /* Listed before the reader starts, so that a reader that ends at once unlists it. */
    AcquireSRWLockExclusive(&g_conns_lock);
    c->next = g_conns;
    g_conns = c;
    ReleaseSRWLockExclusive(&g_conns_lock);
    InterlockedIncrement(&c->refs); /* this function's, while it waits for the reader */
    HANDLE thread = CreateThread(NULL, 0, reader_main, c, 0, NULL);
    if (thread) {
        CloseHandle(thread);
        wait_for_reader(c);
        conn_release(c);
        return;
    }
    InterlockedDecrement(&c->refs); /* no reader: its reference goes */
    FreeLibrary(self);
    conn_unlist(c); /* the handle takes the device path */
    conn_release(c);
}
