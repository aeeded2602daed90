/*
 * fltemu.sys: the message device behind fltemu's fltlib.dll, hosted by Wine's winedevice.exe.
 *
 * Each file object of \Device\FltemuMsg is one communication-port handle.  IOCTL_FLTEMU_CONNECT
 * opens a Unix socket to fltemu's daemon and sends Connect; every later IOCTL becomes one
 * request on that socket (docs/protocol.md) and its IRP stays pending until the daemon's
 * answer arrives, when it is completed with the daemon's NTSTATUS, as fltmgr.sys completes
 * FLT_CTL_* IRPs.  The I/O manager then produces what the agent sees: the Win32 error, the
 * IOCP packet, the OVERLAPPED contents.
 *
 * Threads: IRPs arrive on winedevice's single dispatch thread, which must never wait for the
 * daemon (cancel routines even run inside Wine's IRP-completion lock).  It writes a request
 * to the socket only if that cannot block; anything else goes to the connection's writer
 * thread.  One reader thread per connection reads the daemon's frames and completes IRPs.
 * Cancellation (CancelIo/CancelIoEx on a get) sends GetCancel; the get's own GetResult then
 * says what happened (protocol §7.4).  Wine sends IRP_MJ_CLOSE while IRPs are still pending
 * and no IRP_MJ_CLEANUP: pending IRPs complete with STATUS_CANCELLED at close, then the socket
 * is half-closed so the daemon runs DisconnectNotify.
 *
 * Every ntoskrnl import must be implemented by Wine 8.0, not a stub that kills winedevice.exe:
 * every build of the driver compares its imports with imports.allowed (Makefile).
 */
#include <ntifs.h>

#include "../include/fltemu_ioctl.h"
#include "../include/linux_syscall.h"
#include "../include/wire.h"

#define FE_TAG 0x756d6546 /* 'Femu' */

#ifndef STATUS_FLT_NO_WAITER_FOR_REPLY
#define STATUS_FLT_NO_WAITER_FOR_REPLY ((NTSTATUS)0xC01C0020L)
#endif

enum conn_state {
    CONN_NEW,        /* created, no IOCTL_FLTEMU_CONNECT yet */
    CONN_CONNECTING, /* Connect sent, waiting for ConnectResult */
    CONN_OPEN,
    CONN_DEAD, /* the daemon or the filter ended the connection: calls fail at once
                  with STATUS_PORT_DISCONNECTED */
};

/* Which request a pending IRP stands for (kept in Irp->Tail.Overlay.DriverContext[1]). */
enum irp_kind { KIND_CONNECT = 1, KIND_SEND, KIND_GET, KIND_REPLY };

/* A frame the writer thread still has to send. */
struct out_frame {
    struct out_frame *next;
    ULONGLONG length;
    unsigned char data[];
};

typedef struct conn {
    volatile LONG refs; /* the file object's, the reader's and the writer's */
    KSPIN_LOCK lock;    /* guards state, closed, pending, next_rid, the out queue */
    enum conn_state state;
    BOOLEAN closed;     /* IRP_MJ_CLOSE arrived */
    LIST_ENTRY pending; /* IRPs waiting for the daemon, linked by Tail.Overlay.ListEntry */
    ULONGLONG next_rid;
    struct out_frame *out_head, *out_tail; /* the writer's queue, in order */
    BOOLEAN half_close;                    /* shut the socket's write side once the queue is sent */
    BOOLEAN writer_stop;                   /* the connection ended: the writer exits */
    KEVENT out_ready;                      /* the writer's wake-up */
    int fd;                /* -1 until connect; closed when the last reference goes */
    ULONGLONG max_message; /* the daemon's payload limit (ConnectResult) */
    unsigned char token[WIRE_ATTACH_TOKEN_BYTES]; /* ConnectResult.attach_token, or zeros */
} conn;

#define IRP_RID(irp) ((ULONGLONG)(ULONG_PTR)(irp)->Tail.Overlay.DriverContext[0])
#define IRP_KIND(irp) ((ULONG_PTR)(irp)->Tail.Overlay.DriverContext[1])
/* A send's sections (struct section list) and the process that sent it. */
#define IRP_SECTIONS(irp) ((irp)->Tail.Overlay.DriverContext[2])
#define IRP_PROCESS(irp) ((irp)->Tail.Overlay.DriverContext[3])

/* One Section frame kept until its SendResult (protocol §7.1). */
struct section {
    struct section *next;
    ULONG offset;
    ULONG length;
    unsigned char data[];
};

static PDEVICE_OBJECT g_device;

static void fe_copy(void *dst, const void *src, ULONGLONG n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) *d++ = *s++;
}

static void fe_zero(void *dst, ULONGLONG n)
{
    unsigned char *d = dst;
    while (n--) *d++ = 0;
}

static void conn_release(conn *c)
{
    if (InterlockedDecrement(&c->refs) == 0) {
        if (c->fd >= 0) lnx_close(c->fd);
        ExFreePoolWithTag(c, FE_TAG);
    }
}

static void free_sections(PIRP irp)
{
    struct section *s = IRP_SECTIONS(irp);
    IRP_SECTIONS(irp) = NULL;
    while (s) {
        struct section *next = s->next;
        ExFreePoolWithTag(s, FE_TAG);
        s = next;
    }
}

static void complete(PIRP irp, NTSTATUS status, ULONG_PTR information)
{
    if (IRP_KIND(irp) == KIND_SEND) free_sections(irp);
    irp->IoStatus.Status = status;
    irp->IoStatus.Information = information;
    IoCompleteRequest(irp, IO_NO_INCREMENT);
}

/* Sends one whole frame, in order with the frames before it.  Called on the dispatch thread
 * only, so it never blocks: what the socket does not take at once is queued for the writer
 * thread (the queue is empty exactly when the writer is idle, so a direct send cannot
 * overtake a queued frame). */
static void conn_send(conn *c, const unsigned char *frame, ULONGLONG len)
{
    KIRQL irql;
    BOOLEAN idle, ended;
    KeAcquireSpinLock(&c->lock, &irql);
    idle = c->out_head == NULL;
    ended = c->writer_stop;
    KeReleaseSpinLock(&c->lock, irql);
    if (ended) return; /* the reader fails every pending IRP */
    while (idle && len) {
        long long n = lnx_send_flags(c->fd, frame, len, LNX_MSG_DONTWAIT);
        if (n == -LNX_EAGAIN) break;
        if (n <= 0) {
            lnx_shutdown(c->fd, LNX_SHUT_RDWR); /* the reader sees the socket die */
            return;
        }
        frame += n;
        len -= (ULONGLONG)n;
    }
    if (!len) return;
    struct out_frame *f = ExAllocatePoolWithTag(NonPagedPool, sizeof(*f) + len, FE_TAG);
    if (!f) {
        lnx_shutdown(c->fd, LNX_SHUT_RDWR); /* a frame cannot be dropped: end the connection */
        return;
    }
    f->next = NULL;
    f->length = len;
    fe_copy(f->data, frame, len);
    KeAcquireSpinLock(&c->lock, &irql);
    if (c->out_tail)
        c->out_tail->next = f;
    else
        c->out_head = f;
    c->out_tail = f;
    KeReleaseSpinLock(&c->lock, irql);
    KeSetEvent(&c->out_ready, IO_NO_INCREMENT, FALSE);
}

/* Sends the queued frames with blocking writes; shuts the write side once they are out if
 * the handle was closed; exits when the connection ends. */
static void NTAPI writer_main(void *arg)
{
    conn *c = arg;
    KIRQL irql;
    for (;;) {
        KeWaitForSingleObject(&c->out_ready, Executive, KernelMode, FALSE, NULL);
        for (;;) {
            KeAcquireSpinLock(&c->lock, &irql);
            struct out_frame *f = c->out_head;
            BOOLEAN stop = c->writer_stop, half_close = c->half_close && !f;
            if (half_close) c->half_close = FALSE;
            KeReleaseSpinLock(&c->lock, irql);
            if (stop) goto done;
            if (half_close) lnx_shutdown(c->fd, LNX_SHUT_WR);
            if (!f) break;
            const unsigned char *p = f->data;
            ULONGLONG left = f->length;
            while (left) {
                long long n = lnx_send(c->fd, p, left);
                if (n <= 0) {
                    lnx_shutdown(c->fd, LNX_SHUT_RDWR);
                    goto done;
                }
                p += n;
                left -= (ULONGLONG)n;
            }
            KeAcquireSpinLock(&c->lock, &irql);
            c->out_head = f->next;
            if (!c->out_head) c->out_tail = NULL;
            KeReleaseSpinLock(&c->lock, irql);
            ExFreePoolWithTag(f, FE_TAG);
        }
    }
done:
    KeAcquireSpinLock(&c->lock, &irql);
    struct out_frame *f = c->out_head;
    c->out_head = c->out_tail = NULL;
    c->writer_stop = TRUE;
    KeReleaseSpinLock(&c->lock, irql);
    while (f) {
        struct out_frame *next = f->next;
        ExFreePoolWithTag(f, FE_TAG);
        f = next;
    }
    conn_release(c);
    PsTerminateSystemThread(STATUS_SUCCESS);
}

/* Takes a get's cancel routine away before the IRP is completed.  If the routine is already
 * running it owns the cancel lock while it looks the IRP up: wait for it to let go, so the IRP
 * is not completed and freed under it. */
static void disarm_cancel(PIRP irp)
{
    if (IoSetCancelRoutine(irp, NULL) == NULL && IRP_KIND(irp) == KIND_GET) {
        KIRQL cirql;
        IoAcquireCancelSpinLock(&cirql);
        IoReleaseCancelSpinLock(cirql);
    }
}

/* Removes the pending IRP with this rid, or returns NULL. */
static PIRP take_pending(conn *c, ULONGLONG rid)
{
    KIRQL irql;
    PIRP found = NULL;
    KeAcquireSpinLock(&c->lock, &irql);
    for (LIST_ENTRY *e = c->pending.Flink; e != &c->pending; e = e->Flink) {
        PIRP irp = CONTAINING_RECORD(e, IRP, Tail.Overlay.ListEntry);
        if (IRP_RID(irp) == rid) {
            RemoveEntryList(e);
            found = irp;
            break;
        }
    }
    KeReleaseSpinLock(&c->lock, irql);
    if (found) disarm_cancel(found);
    return found;
}

/* Moves every pending IRP to `out` (the connection ended or its handle closed). */
static void take_all_pending(conn *c, LIST_ENTRY *out)
{
    InitializeListHead(out);
    while (!IsListEmpty(&c->pending)) {
        LIST_ENTRY *e = RemoveHeadList(&c->pending);
        InsertTailList(out, e);
    }
}

static void complete_all(LIST_ENTRY *list, NTSTATUS status)
{
    while (!IsListEmpty(list)) {
        PIRP irp = CONTAINING_RECORD(RemoveHeadList(list), IRP, Tail.Overlay.ListEntry);
        disarm_cancel(irp);
        complete(irp, status, 0);
    }
}

/* CancelIo / CancelIoEx / thread exit on a pending get: ask the daemon to withdraw the getter.
 * The IRP completes when the GetResult comes: STATUS_CANCELLED, or the message if it won. */
static void NTAPI cancel_get(PDEVICE_OBJECT device, PIRP irp)
{
    conn *c = IoGetCurrentIrpStackLocation(irp)->FileObject->FsContext;
    ULONGLONG rid = 0;
    BOOLEAN found = FALSE;
    KIRQL irql;
    (void)device;
    /* Look the IRP up while the cancel lock is still held (see take_pending). */
    KeAcquireSpinLock(&c->lock, &irql);
    for (LIST_ENTRY *e = c->pending.Flink; e != &c->pending; e = e->Flink) {
        if (e == &irp->Tail.Overlay.ListEntry) {
            rid = IRP_RID(irp);
            found = TRUE;
            break;
        }
    }
    if (found) InterlockedIncrement(&c->refs);
    KeReleaseSpinLock(&c->lock, irql);
    IoReleaseCancelSpinLock(irp->CancelIrql);
    if (!found) return;
    unsigned char frame[32];
    struct wire_out o = {frame + 4};
    wire_put_array(&o, 2);
    wire_put_uint(&o, WIRE_GET_CANCEL);
    wire_put_uint(&o, rid);
    conn_send(c, frame, wire_finish(&o, frame));
    conn_release(c);
}

/* A section object of `data`, opened in process `pid` for reading, as avscan's kernel opens
 * one in its user program (ZwCreateSection, then ObOpenObjectByPointer in the caller's
 * process).  Returns the handle value in that process, or 0. */
static ULONGLONG open_section_in(HANDLE pid, const unsigned char *data, ULONG length)
{
    OBJECT_ATTRIBUTES attr;
    LARGE_INTEGER size;
    HANDLE section = NULL, process = NULL, target = NULL;
    PVOID base = NULL;
    SIZE_T view = 0;
    CLIENT_ID cid;
    InitializeObjectAttributes(&attr, NULL, OBJ_KERNEL_HANDLE, NULL, NULL);
    size.QuadPart = length;
    if (!length || !NT_SUCCESS(ZwCreateSection(&section, SECTION_ALL_ACCESS, &attr, &size,
                                               PAGE_READWRITE, SEC_COMMIT, NULL)))
        return 0;
    if (NT_SUCCESS(ZwMapViewOfSection(section, NtCurrentProcess(), &base, 0, 0, NULL, &view,
                                      ViewUnmap, 0, PAGE_READWRITE))) {
        fe_copy(base, data, length);
        ZwUnmapViewOfSection(NtCurrentProcess(), base);
        cid.UniqueProcess = pid;
        cid.UniqueThread = NULL;
        if (NT_SUCCESS(ZwOpenProcess(&process, PROCESS_DUP_HANDLE, &attr, &cid))) {
            if (!NT_SUCCESS(ZwDuplicateObject(NtCurrentProcess(), section, process, &target,
                                              SECTION_MAP_READ | SECTION_QUERY, 0, 0)))
                target = NULL;
            ZwClose(process);
        }
    }
    ZwClose(section);
    return (ULONGLONG)(ULONG_PTR)target;
}

/* Keeps a Section frame with the pending send it belongs to. */
static void keep_section(conn *c, const struct wire_result *r)
{
    KIRQL irql;
    BOOLEAN kept = FALSE;
    if (r->data_len > 0xFFFFFFFFull) return;
    struct section *s = ExAllocatePoolWithTag(NonPagedPool, sizeof(*s) + r->data_len, FE_TAG);
    if (!s) return; /* the handle stays the filter's placeholder */
    s->offset = r->offset;
    s->length = (ULONG)r->data_len;
    fe_copy(s->data, r->data, r->data_len);
    KeAcquireSpinLock(&c->lock, &irql);
    for (LIST_ENTRY *e = c->pending.Flink; e != &c->pending; e = e->Flink) {
        PIRP irp = CONTAINING_RECORD(e, IRP, Tail.Overlay.ListEntry);
        if (IRP_RID(irp) == r->rid && IRP_KIND(irp) == KIND_SEND) {
            s->next = IRP_SECTIONS(irp);
            IRP_SECTIONS(irp) = s;
            kept = TRUE;
            break;
        }
    }
    KeReleaseSpinLock(&c->lock, irql);
    if (!kept) ExFreePoolWithTag(s, FE_TAG);
}

static void handle_result(conn *c, const struct wire_result *r)
{
    PIRP irp;
    if (r->tag == WIRE_SECTION) {
        keep_section(c, r);
        return;
    }
    if (r->tag == WIRE_DISCONNECTED) {
        /* The filter ended the connection: later calls fail at once (protocol §10). */
        KIRQL irql;
        KeAcquireSpinLock(&c->lock, &irql);
        c->state = CONN_DEAD;
        KeReleaseSpinLock(&c->lock, irql);
        return;
    }
    if (r->tag == WIRE_CONNECT_RESULT) {
        KIRQL irql;
        NTSTATUS status = NT_SUCCESS((NTSTATUS)r->status) ? STATUS_SUCCESS : (NTSTATUS)r->status;
        irp = take_pending(c, 0);
        KeAcquireSpinLock(&c->lock, &irql);
        if (c->state == CONN_CONNECTING) c->state = NT_SUCCESS(status) ? CONN_OPEN : CONN_DEAD;
        if (r->max_message)
            c->max_message = r->max_message < (1ull << 40) ? r->max_message : (1ull << 40);
        if (r->token_len == WIRE_ATTACH_TOKEN_BYTES)
            fe_copy(c->token, r->token, WIRE_ATTACH_TOKEN_BYTES);
        ULONGLONG max_message = c->max_message;
        KeReleaseSpinLock(&c->lock, irql);
        if (!irp) return;
        ULONG_PTR info = 0;
        PIO_STACK_LOCATION sp = IoGetCurrentIrpStackLocation(irp);
        if (NT_SUCCESS(status) &&
            sp->Parameters.DeviceIoControl.OutputBufferLength >= sizeof(FLTEMU_CONNECT_OUT)) {
            FLTEMU_CONNECT_OUT *out = irp->AssociatedIrp.SystemBuffer;
            fe_copy(out->token, c->token, sizeof(out->token));
            out->max_message = max_message;
            info = sizeof(*out);
        }
        complete(irp, status, info);
        return;
    }
    if ((r->tag == WIRE_GET_RESULT || r->tag == WIRE_REPLY_RESULT) &&
        r->status == (unsigned)STATUS_PORT_DISCONNECTED) {
        /* The filter closed this connection (FltCloseClientPort, unload): from now on every
         * call fails at once, with no completion packet, as on Windows (protocol §9). */
        KIRQL irql;
        KeAcquireSpinLock(&c->lock, &irql);
        c->state = CONN_DEAD;
        KeReleaseSpinLock(&c->lock, irql);
    }
    irp = take_pending(c, r->rid);
    if (!irp) return; /* the handle was closed meanwhile: the IRP already completed */
    PIO_STACK_LOCATION sp = IoGetCurrentIrpStackLocation(irp);
    ULONG out_len = sp->Parameters.DeviceIoControl.OutputBufferLength;
    unsigned char *buf = irp->AssociatedIrp.SystemBuffer;
    NTSTATUS status = (NTSTATUS)r->status;
    ULONG_PTR info = 0;
    if (r->tag == WIRE_SEND_RESULT && IRP_KIND(irp) == KIND_SEND) {
        ULONGLONG n = r->data_len <= out_len ? r->data_len : out_len;
        if (!NT_ERROR(status) && n) fe_copy(buf, r->data, n);
        info = NT_ERROR(status) ? 0 : (ULONG_PTR)n;
        for (struct section *s = IRP_SECTIONS(irp); s && !NT_ERROR(status); s = s->next) {
            ULONGLONG handle =
                s->offset + 8ull <= n ? open_section_in(IRP_PROCESS(irp), s->data, s->length) : 0;
            if (handle) fe_copy(buf + s->offset, &handle, 8);
        }
    } else if (r->tag == WIRE_GET_RESULT && IRP_KIND(irp) == KIND_GET) {
        if (status == STATUS_SUCCESS) {
            if (r->data_len + 16 > out_len) {
                status = STATUS_BUFFER_TOO_SMALL; /* cannot happen with a correct daemon */
                info = (ULONG_PTR)(r->data_len + 16);
            } else {
                fe_zero(buf, 16);
                *(ULONG *)buf = r->reply_length;         /* FILTER_MESSAGE_HEADER.ReplyLength */
                *(ULONGLONG *)(buf + 8) = r->message_id; /* .MessageId */
                fe_copy(buf + 16, r->data, r->data_len);
                info = (ULONG_PTR)(r->data_len + 16);
            }
        } else if (status == STATUS_BUFFER_TOO_SMALL) {
            info = (ULONG_PTR)r->required_size; /* semantics §3.3: bytes = required size */
        }
    } else if (r->tag == WIRE_REPLY_RESULT && IRP_KIND(irp) == KIND_REPLY) {
        /* status only */
    } else {
        status = STATUS_PORT_DISCONNECTED; /* a result of the wrong type: daemon bug */
    }
    complete(irp, status, info);
}

static void NTAPI reader_main(void *arg)
{
    conn *c = arg;
    NTSTATUS end = STATUS_PORT_DISCONNECTED;
    unsigned char small[512];
    for (;;) {
        unsigned char hdr[4];
        if (!lnx_read_full(c->fd, hdr, 4)) break;
        ULONGLONG len = hdr[0] | (hdr[1] << 8) | (hdr[2] << 16) | ((ULONGLONG)hdr[3] << 24);
        if (len == 0 || len > c->max_message + WIRE_FRAME_OVERHEAD) break;
        unsigned char *body =
            len <= sizeof(small) ? small : ExAllocatePoolWithTag(NonPagedPool, len, FE_TAG);
        if (!body) break;
        BOOLEAN ok = lnx_read_full(c->fd, body, len);
        struct wire_result r;
        if (ok && wire_decode(body, len, &r) == 0) {
            if (r.tag == WIRE_GOODBYE) {
                end = (NTSTATUS)r.status;
                ok = FALSE;
            } else {
                handle_result(c, &r);
            }
        } else {
            ok = FALSE;
        }
        if (body != small) ExFreePoolWithTag(body, FE_TAG);
        if (!ok) break;
    }
    /* The connection is over: every pending call fails as on a disconnected port. */
    KIRQL irql;
    LIST_ENTRY stolen;
    KeAcquireSpinLock(&c->lock, &irql);
    c->state = CONN_DEAD;
    take_all_pending(c, &stolen);
    KeReleaseSpinLock(&c->lock, irql);
    complete_all(&stolen, end == STATUS_SUCCESS ? STATUS_PORT_DISCONNECTED : end);
    /* Wake a writer blocked in send; the descriptor is closed with the last reference. */
    lnx_shutdown(c->fd, LNX_SHUT_RDWR);
    KeAcquireSpinLock(&c->lock, &irql);
    c->writer_stop = TRUE;
    KeReleaseSpinLock(&c->lock, irql);
    KeSetEvent(&c->out_ready, IO_NO_INCREMENT, FALSE);
    conn_release(c);
    PsTerminateSystemThread(STATUS_SUCCESS);
}

/* Queues `irp` under `rid` and sends the frame built by the caller for that rid.
 * Returns STATUS_PENDING, or the status to complete the IRP with at once.
 *
 * Once the IRP is on the pending list the reader thread may complete it at any moment (the
 * daemon answers, or the connection dies), so nothing here touches it after the insertion.
 * Cancel routines run on the dispatch thread (this one), so none can run in between. */
static NTSTATUS submit(conn *c, PIRP irp, enum irp_kind kind, unsigned char *frame,
                       struct wire_out *o, ULONGLONG rid)
{
    KIRQL irql;
    NTSTATUS refused = STATUS_SUCCESS;
    irp->Tail.Overlay.DriverContext[0] = (PVOID)(ULONG_PTR)rid;
    irp->Tail.Overlay.DriverContext[1] = (PVOID)(ULONG_PTR)kind;
    IRP_SECTIONS(irp) = NULL;
    /* Wine dispatches in the context of the calling thread, as Windows does. */
    IRP_PROCESS(irp) = PsGetCurrentProcessId();
    IoMarkIrpPending(irp);
    if (kind == KIND_GET) IoSetCancelRoutine(irp, cancel_get);
    KeAcquireSpinLock(&c->lock, &irql);
    if (c->state == CONN_DEAD)
        refused = STATUS_PORT_DISCONNECTED; /* died since begin_request */
    else if (kind == KIND_GET && irp->Cancel)
        refused = STATUS_CANCELLED;
    else
        InsertTailList(&c->pending, &irp->Tail.Overlay.ListEntry);
    KeReleaseSpinLock(&c->lock, irql);
    if (refused != STATUS_SUCCESS) {
        if (kind == KIND_GET) IoSetCancelRoutine(irp, NULL);
        IoGetCurrentIrpStackLocation(irp)->Control &= ~SL_PENDING_RETURNED;
        return refused;
    }
    conn_send(c, frame, wire_finish(o, frame));
    return STATUS_PENDING;
}

/* Takes a rid (and reads the daemon's payload limit) and checks the connection can carry a
 * request.  On failure the caller completes the IRP with *status. */
static BOOLEAN begin_request(conn *c, ULONGLONG *rid, ULONGLONG *max_message, NTSTATUS *status)
{
    KIRQL irql;
    BOOLEAN ok = FALSE;
    KeAcquireSpinLock(&c->lock, &irql);
    if (c->state == CONN_OPEN) {
        *rid = ++c->next_rid;
        *max_message = c->max_message; /* written by the reader thread, under the lock */
        ok = TRUE;
    } else if (c->state == CONN_DEAD) {
        *status = STATUS_PORT_DISCONNECTED;
    } else {
        *status = STATUS_INVALID_DEVICE_REQUEST; /* not connected yet */
    }
    KeReleaseSpinLock(&c->lock, irql);
    return ok;
}

static NTSTATUS do_connect(conn *c, PIRP irp, const unsigned char *in, ULONG in_len)
{
    const FLTEMU_CONNECT_IN *hdr = (const FLTEMU_CONNECT_IN *)in;
    if (in_len < sizeof(*hdr)) return STATUS_INVALID_PARAMETER;
    if (hdr->version != FLTEMU_IOCTL_VERSION) return STATUS_REVISION_MISMATCH;
    ULONG need = sizeof(*hdr) + hdr->name_bytes + hdr->context_bytes + hdr->path_bytes;
    if (need > in_len || hdr->path_bytes == 0 || hdr->path_bytes > FLTEMU_MAX_SOCKET_PATH ||
        hdr->name_bytes > FLTEMU_MAX_PORT_NAME)
        return STATUS_INVALID_PARAMETER;
    const unsigned char *name = in + sizeof(*hdr);
    const unsigned char *context = name + hdr->name_bytes;
    const unsigned char *path = context + hdr->context_bytes;

    KIRQL irql;
    KeAcquireSpinLock(&c->lock, &irql);
    BOOLEAN fresh = c->state == CONN_NEW;
    if (fresh) c->state = CONN_CONNECTING;
    KeReleaseSpinLock(&c->lock, irql);
    if (!fresh) return STATUS_INVALID_DEVICE_REQUEST;

    struct lnx_sockaddr_un addr;
    fe_zero(&addr, sizeof(addr));
    addr.sun_family = LNX_AF_UNIX;
    fe_copy(addr.sun_path, path, hdr->path_bytes);
    long long fd = lnx_socket_unix();
    NTSTATUS status = STATUS_SUCCESS;
    if (fd < 0) {
        status = STATUS_INSUFFICIENT_RESOURCES;
    } else {
        long long r = lnx_connect((int)fd, &addr, 2 + hdr->path_bytes);
        /* The reference client's mapping (protocol §1): permission -> access denied, any
         * other failure ("no daemon") -> the status of a port that does not exist.  A daemon
         * run by a user the agent does not trust is refused as a permission failure. */
        if (r == -LNX_EACCES || r == -LNX_EPERM)
            status = STATUS_ACCESS_DENIED;
        else if (r < 0)
            status = STATUS_OBJECT_NAME_NOT_FOUND;
        else if (!lnx_trusted_peer(lnx_peer_uid((int)fd), hdr->trust_uid))
            status = STATUS_ACCESS_DENIED;
    }
    if (status != STATUS_SUCCESS) {
        if (fd >= 0) lnx_close((int)fd);
        KeAcquireSpinLock(&c->lock, &irql);
        c->state = CONN_DEAD;
        KeReleaseSpinLock(&c->lock, irql);
        return status;
    }
    c->fd = (int)fd; /* closed with the connection's last reference */

    ULONGLONG size = WIRE_REQUEST_MAX(hdr->name_bytes + hdr->context_bytes);
    unsigned char *frame = ExAllocatePoolWithTag(NonPagedPool, size, FE_TAG);
    HANDLE reader, writer;
    InterlockedIncrement(&c->refs); /* the reader's */
    if (frame && NT_SUCCESS(PsCreateSystemThread(&reader, THREAD_ALL_ACCESS, NULL, NULL, NULL,
                                                 reader_main, c))) {
        ZwClose(reader);
    } else {
        InterlockedDecrement(&c->refs);
        if (frame) ExFreePoolWithTag(frame, FE_TAG);
        KeAcquireSpinLock(&c->lock, &irql);
        c->state = CONN_DEAD;
        c->writer_stop = TRUE;
        KeReleaseSpinLock(&c->lock, irql);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    /* From here on the reader owns the connection's end: a failure below makes it see EOF. */
    InterlockedIncrement(&c->refs); /* the writer's */
    if (NT_SUCCESS(
            PsCreateSystemThread(&writer, THREAD_ALL_ACCESS, NULL, NULL, NULL, writer_main, c))) {
        ZwClose(writer);
    } else {
        InterlockedDecrement(&c->refs);
        lnx_shutdown(c->fd, LNX_SHUT_RDWR);
    }
    struct wire_out o = {frame + 4};
    wire_put_array(&o, 5);
    wire_put_uint(&o, WIRE_CONNECT);
    wire_put_uint(&o, WIRE_PROTOCOL_VERSION);
    wire_put_str(&o, name, hdr->name_bytes);
    wire_put_bin(&o, context, hdr->context_bytes);
    wire_put_uint(&o, hdr->options | WIRE_OPTION_DISCONNECT_NOTICE | WIRE_OPTION_SECTIONS |
                          WIRE_OPTION_ATTACH);
    /* rid 0 stands for the connect: request ids start at 1. */
    status = submit(c, irp, KIND_CONNECT, frame, &o, 0);
    ExFreePoolWithTag(frame, FE_TAG);
    return status;
}

static NTSTATUS do_request(conn *c, PIRP irp, ULONG code)
{
    PIO_STACK_LOCATION sp = IoGetCurrentIrpStackLocation(irp);
    ULONG in_len = sp->Parameters.DeviceIoControl.InputBufferLength;
    ULONG out_len = sp->Parameters.DeviceIoControl.OutputBufferLength;
    const unsigned char *in = irp->AssociatedIrp.SystemBuffer;
    ULONGLONG rid;
    NTSTATUS status;
    ULONG out_address = 0;

    if (code == IOCTL_FLTEMU_CONNECT) return do_connect(c, irp, in, in_len);
    if (FLTEMU_IS_SEND_AT(code)) {
        out_address = FLTEMU_SEND_AT_LOW(code);
        code = IOCTL_FLTEMU_SEND;
    }
    /* FILTER_REPLY_HEADER {Status @0, MessageId @8} comes first in a reply. */
    if (code == IOCTL_FLTEMU_REPLY && in_len < 16) return STATUS_INVALID_PARAMETER;
    ULONGLONG max_message;
    if (!begin_request(c, &rid, &max_message, &status)) return status;

    ULONGLONG payload = code == IOCTL_FLTEMU_GET ? 0 : in_len;
    /* Over the daemon's limit: this call fails, as the daemon would fail it (protocol §14). */
    if (payload > max_message) return STATUS_INSUFFICIENT_RESOURCES;
    unsigned char stack_frame[64];
    ULONGLONG size = WIRE_REQUEST_MAX(payload);
    unsigned char *frame = size <= sizeof(stack_frame)
                               ? stack_frame
                               : ExAllocatePoolWithTag(NonPagedPool, size, FE_TAG);
    if (!frame) return STATUS_INSUFFICIENT_RESOURCES;
    struct wire_out o = {frame + 4};
    enum irp_kind kind;
    switch (code) {
    case IOCTL_FLTEMU_SEND:
        kind = KIND_SEND;
        wire_put_array(&o, 5);
        wire_put_uint(&o, WIRE_SEND_REQUEST);
        wire_put_uint(&o, rid);
        wire_put_bin(&o, in, in_len);
        wire_put_uint(&o, out_len);
        wire_put_uint(&o, out_address);
        break;
    case IOCTL_FLTEMU_GET:
        kind = KIND_GET;
        wire_put_array(&o, 3);
        wire_put_uint(&o, WIRE_GET_REQUEST);
        wire_put_uint(&o, rid);
        wire_put_uint(&o, out_len);
        break;
    default: /* IOCTL_FLTEMU_REPLY: FILTER_REPLY_HEADER + payload */
        kind = KIND_REPLY;
        wire_put_array(&o, 5);
        wire_put_uint(&o, WIRE_REPLY_REQUEST);
        wire_put_uint(&o, rid);
        wire_put_uint(&o, *(const ULONGLONG *)(in + 8));
        wire_put_uint(&o, *(const ULONG *)in);
        wire_put_bin(&o, in + 16, in_len - 16);
        break;
    }
    status = submit(c, irp, kind, frame, &o, rid);
    if (frame != stack_frame) ExFreePoolWithTag(frame, FE_TAG);
    return status;
}

static NTSTATUS NTAPI dispatch_create(PDEVICE_OBJECT device, PIRP irp)
{
    (void)device;
    conn *c = ExAllocatePoolWithTag(NonPagedPool, sizeof(conn), FE_TAG);
    if (!c) {
        complete(irp, STATUS_INSUFFICIENT_RESOURCES, 0);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    fe_zero(c, sizeof(*c));
    c->refs = 1;
    KeInitializeSpinLock(&c->lock);
    InitializeListHead(&c->pending);
    KeInitializeEvent(&c->out_ready, SynchronizationEvent, FALSE);
    c->fd = -1;
    c->state = CONN_NEW;
    c->max_message = WIRE_DEFAULT_MAX_MESSAGE;
    IoGetCurrentIrpStackLocation(irp)->FileObject->FsContext = c;
    complete(irp, STATUS_SUCCESS, 0);
    return STATUS_SUCCESS;
}

/* The last handle is gone (Wine sends no IRP_MJ_CLEANUP).  On Windows fltmgr's cleanup runs
 * the disconnect sequence (semantics §3.5, §2.4): pending gets complete with
 * STATUS_PORT_DISCONNECTED (ERROR_INVALID_HANDLE, 0x80070006, as the Python clients give), and
 * a send in MessageNotify gets MessageNotify's own answer.  The half-close makes the daemon
 * run that sequence, and the reader thread frees the connection after its EOF. */
static NTSTATUS NTAPI dispatch_close(PDEVICE_OBJECT device, PIRP irp)
{
    (void)device;
    conn *c = IoGetCurrentIrpStackLocation(irp)->FileObject->FsContext;
    if (c) {
        KIRQL irql;
        LIST_ENTRY cancelled;
        BOOLEAN now;
        InitializeListHead(&cancelled);
        KeAcquireSpinLock(&c->lock, &irql);
        c->closed = TRUE;
        /* Gets (and a connect) end now, as fltmgr's cleanup ends them; a send or a reply in
         * flight keeps its answer: the daemon finishes MessageNotify before its EOF. */
        for (LIST_ENTRY *e = c->pending.Flink; e != &c->pending;) {
            LIST_ENTRY *next = e->Flink;
            ULONG_PTR kind = IRP_KIND(CONTAINING_RECORD(e, IRP, Tail.Overlay.ListEntry));
            if (kind == KIND_GET || kind == KIND_CONNECT) {
                RemoveEntryList(e);
                InsertTailList(&cancelled, e);
            }
            e = next;
        }
        /* Half-close after whatever the writer still has to send. */
        now = c->out_head == NULL && !c->writer_stop;
        if (!now) c->half_close = TRUE;
        KeReleaseSpinLock(&c->lock, irql);
        complete_all(&cancelled, STATUS_PORT_DISCONNECTED);
        if (c->fd >= 0) {
            if (now)
                lnx_shutdown(c->fd, LNX_SHUT_WR);
            else
                KeSetEvent(&c->out_ready, IO_NO_INCREMENT, FALSE);
        }
        conn_release(c);
    }
    complete(irp, STATUS_SUCCESS, 0);
    return STATUS_SUCCESS;
}

static NTSTATUS NTAPI dispatch_ioctl(PDEVICE_OBJECT device, PIRP irp)
{
    (void)device;
    PIO_STACK_LOCATION sp = IoGetCurrentIrpStackLocation(irp);
    conn *c = sp->FileObject->FsContext;
    ULONG code = sp->Parameters.DeviceIoControl.IoControlCode;
    NTSTATUS status;
    if (!c)
        status = STATUS_INVALID_HANDLE;
    else if (code == IOCTL_FLTEMU_CONNECT || code == IOCTL_FLTEMU_SEND || FLTEMU_IS_SEND_AT(code) ||
             code == IOCTL_FLTEMU_GET || code == IOCTL_FLTEMU_REPLY)
        status = do_request(c, irp, code);
    else
        status = STATUS_INVALID_DEVICE_REQUEST;
    if (status != STATUS_PENDING) complete(irp, status, 0);
    return status;
}

static NTSTATUS NTAPI dispatch_other(PDEVICE_OBJECT device, PIRP irp)
{
    (void)device;
    complete(irp, STATUS_SUCCESS, 0);
    return STATUS_SUCCESS;
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT driver, PUNICODE_STRING registry)
{
    UNICODE_STRING name, link;
    NTSTATUS status;
    (void)registry;
    RtlInitUnicodeString(&name, FLTEMU_DEVICE_NAME);
    RtlInitUnicodeString(&link, FLTEMU_DOS_NAME);
    status = IoCreateDevice(driver, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &g_device);
    if (!NT_SUCCESS(status)) return status;
    status = IoCreateSymbolicLink(&link, &name);
    if (!NT_SUCCESS(status)) {
        IoDeleteDevice(g_device);
        g_device = NULL;
        return status;
    }
    for (int i = 0; i <= IRP_MJ_MAXIMUM_FUNCTION; i++) driver->MajorFunction[i] = dispatch_other;
    driver->MajorFunction[IRP_MJ_CREATE] = dispatch_create;
    driver->MajorFunction[IRP_MJ_CLOSE] = dispatch_close;
    driver->MajorFunction[IRP_MJ_DEVICE_CONTROL] = dispatch_ioctl;
    /* No DriverUnload: reader and writer threads may run the driver's code at any time, so
     * the driver stays loaded for the life of the Wine session (sc stop refuses). */
    return STATUS_SUCCESS;
}
