/*
 * fltemu's fltlib.dll: the user-mode Filter Manager library, for Windows agents run under
 * Wine against fltemu's daemon.
 *
 * As Windows' fltlib does with FltMgr's message device, every communication-port call is one
 * NtDeviceIoControlFile on a handle of fltemu.sys's device (\Device\FltemuMsg), and the
 * HRESULT comes from the IRP's NTSTATUS through fltlib's translation (semantics §3.6).  The
 * handle is a real file handle: CreateIoCompletionPort, GetOverlappedResult, CancelIo(Ex),
 * DuplicateHandle and CloseHandle are kernel32's and behave as on Windows, because the I/O
 * manager (Wine's) completes the driver's IRPs.
 *
 * The filter-management exports are in manage.c.
 */
#define WIN32_LEAN_AND_MEAN
#define WIN32_NO_STATUS
#include <windows.h>
#undef WIN32_NO_STATUS
#include <ntstatus.h>
#include <winternl.h>
#include <fltuser.h>

#include "../include/fltemu_ioctl.h"
#include "../include/linux_syscall.h"
#include "fltlib_private.h"

#ifndef FLT_PORT_FLAG_SYNC_HANDLE
#define FLT_PORT_FLAG_SYNC_HANDLE 0x00000001
#endif
#define FILE_OPEN_ 0x00000001
#define FILE_SYNCHRONOUS_IO_NONALERT_ 0x00000020
#define FILE_NON_DIRECTORY_FILE_ 0x00000040

NTSTATUS NTAPI NtDeviceIoControlFile(HANDLE, HANDLE, PIO_APC_ROUTINE, PVOID, PIO_STATUS_BLOCK,
                                     ULONG, PVOID, ULONG, PVOID, ULONG);
ULONG NTAPI RtlNtStatusToDosError(NTSTATUS);

static DWORD g_tls = TLS_OUT_OF_INDEXES;

/* fltlib's NTSTATUS -> HRESULT translation (semantics §3.6, protocol §13). */
HRESULT flt_hresult(NTSTATUS status)
{
    ULONG st = (ULONG)status, facility = (st >> 16) & 0xFFF, err;
    if (st == 0) return S_OK;
    if (facility) {
        if (facility == 0x1C) { /* FACILITY_FILTER_MANAGER */
            if (st == 0x801C0001) return HRESULT_FROM_WIN32(ERROR_INSUFFICIENT_BUFFER);
            return (HRESULT)((st & 0x8000FFFF) | 0x001F0000);
        }
        return E_FAIL;
    }
    if (status == STATUS_TIMEOUT) return HRESULT_FROM_WIN32(WAIT_TIMEOUT);
    err = RtlNtStatusToDosError(status);
    if ((LONG)err <= 0) return (HRESULT)err;
    return (HRESULT)(0x80070000 | (err & 0xFFFF));
}

/* What fltlib keeps per thread: the event its synchronous calls wait on, so that each call
 * waits for its own IRP, never for the handle (semantics §3.3: several threads may wait on
 * one asynchronous handle). */
struct thread_state {
    HANDLE event;
};

static struct thread_state *thread_state(void)
{
    struct thread_state *t = TlsGetValue(g_tls);
    if (!t) {
        t = HeapAlloc(GetProcessHeap(), HEAP_ZERO_MEMORY, sizeof *t);
        if (t) TlsSetValue(g_tls, t);
    }
    return t;
}

static HANDLE thread_event(void)
{
    struct thread_state *t = thread_state();
    if (t && !t->event) t->event = CreateEventW(NULL, FALSE, FALSE, NULL);
    return t ? t->event : NULL;
}

/* The overlapped gets of the process, by OVERLAPPED, with the thread that issued each last
 * (see cancel_thread_gets).  Agents reuse their OVERLAPPEDs, so the table stays small; past
 * OWNED_GETS distinct ones the oldest is forgotten (its thread's exit leaves it to Wine). */
#define OWNED_GETS 1024
static SRWLOCK g_gets_lock = SRWLOCK_INIT;
static struct owned_get {
    OVERLAPPED *ov;
    HANDLE port;
    DWORD thread;
} g_gets[OWNED_GETS];
static unsigned g_gets_count, g_gets_oldest;

/* Seconds a thread's exit waits for the cancelled gets to complete: they go to the daemon
 * and back (protocol §7.4), and a daemon that does not answer must not hold the exit, which
 * runs under the loader lock. */
#define EXIT_CANCEL_WAIT_MS 5000

/* Notes that this thread issues a get with `ov`, before it is issued: a thread that exits
 * meanwhile cannot take the OVERLAPPED for its own. */
static void remember_get(HANDLE port, OVERLAPPED *ov)
{
    unsigned i;
    AcquireSRWLockExclusive(&g_gets_lock);
    for (i = 0; i < g_gets_count && g_gets[i].ov != ov; i++)
        ;
    if (i == g_gets_count)
        i = g_gets_count < OWNED_GETS ? g_gets_count++ : g_gets_oldest++ % OWNED_GETS;
    g_gets[i].ov = ov;
    g_gets[i].port = port;
    g_gets[i].thread = GetCurrentThreadId();
    ReleaseSRWLockExclusive(&g_gets_lock);
}

/* Whether `h` is bound to a completion port: binding it again fails with
 * STATUS_INVALID_PARAMETER, and naming no port changes nothing on an unbound handle. */
static BOOL has_completion_port(HANDLE h)
{
    struct {
        HANDLE port;
        ULONG_PTR key;
    } info = {NULL, 0}; /* FILE_COMPLETION_INFORMATION */
    IO_STATUS_BLOCK io;
    return NtSetInformationFile(h, &io, &info, sizeof info, (FILE_INFORMATION_CLASS)30) ==
           STATUS_INVALID_PARAMETER;
}

/* A thread exits: Windows cancels its pending I/O on handles with no completion port
 * (semantics §3.5).  Wine cancels it too, at the thread's terminate request, while the thread
 * still runs; a completion that reaches wineserver before it has seen the thread die is queued
 * to the thread as an APC it never runs: the event is set while Internal still reads
 * STATUS_PENDING.  So fltlib cancels the gets this thread issued last on each OVERLAPPED
 * itself, while the thread still runs, and waits (at most EXIT_CANCEL_WAIT_MS) until each
 * has completed: ERROR_OPERATION_ABORTED, or its message if one won the race (protocol
 * §7.4).  The lock is held while cancelling, so no other thread can issue a get with one of
 * these OVERLAPPEDs in between; CancelIoEx only matches pending I/O by address, so one that
 * completed (or was freed) is never touched. */
static void cancel_thread_gets(void)
{
    OVERLAPPED *cancelled[64];
    unsigned n = 0;
    DWORD me = GetCurrentThreadId();
    AcquireSRWLockExclusive(&g_gets_lock);
    for (unsigned i = 0; i < g_gets_count; i++) {
        if (g_gets[i].thread != me) continue;
        g_gets[i].thread = 0;
        if (!has_completion_port(g_gets[i].port) && CancelIoEx(g_gets[i].port, g_gets[i].ov) &&
            n < sizeof cancelled / sizeof *cancelled)
            cancelled[n++] = g_gets[i].ov;
    }
    ReleaseSRWLockExclusive(&g_gets_lock);
    DWORD start = GetTickCount();
    for (unsigned i = 0; i < n; i++) {
        /* The completion comes as an APC to this thread, run while it waits. */
        while (cancelled[i]->Internal == (ULONG_PTR)STATUS_PENDING &&
               GetTickCount() - start < EXIT_CANCEL_WAIT_MS)
            SleepEx(1, FALSE);
    }
}

static void free_thread_state(void)
{
    struct thread_state *t = TlsGetValue(g_tls);
    if (!t) return;
    if (t->event) CloseHandle(t->event);
    HeapFree(GetProcessHeap(), 0, t);
    TlsSetValue(g_tls, NULL);
}

/* One IOCTL, waited for.  No completion packet is queued for it (ApcContext NULL), as for
 * fltlib's synchronous calls on an IOCP-bound handle (semantics §3.2). */
static NTSTATUS ioctl_sync(HANDLE h, ULONG code, void *in, ULONG in_len, void *out, ULONG out_len,
                           ULONG_PTR *information)
{
    IO_STATUS_BLOCK iosb;
    HANDLE ev = thread_event();
    NTSTATUS st;
    *information = 0;
    if (!ev) return STATUS_INSUFFICIENT_RESOURCES;
    iosb.Status = STATUS_PENDING;
    iosb.Information = 0;
    st = NtDeviceIoControlFile(h, ev, NULL, NULL, &iosb, code, in, in_len, out, out_len);
    if (st == STATUS_PENDING) {
        WaitForSingleObject(ev, INFINITE);
        st = iosb.Status;
    }
    if (st != STATUS_PENDING) *information = iosb.Information;
    return st;
}

/* One environment variable as UTF-8 (the path bytes the daemon's side sees); FALSE when it is
 * unset, empty or does not fit. */
static BOOL env_utf8(const WCHAR *name, char *out, DWORD size)
{
    WCHAR wide[FLTEMU_MAX_SOCKET_PATH + 2];
    DWORD n = GetEnvironmentVariableW(name, wide, FLTEMU_MAX_SOCKET_PATH + 2);
    if (!n || n >= FLTEMU_MAX_SOCKET_PATH + 2) return FALSE;
    return WideCharToMultiByte(CP_UTF8, 0, wide, -1, out, (int)size, NULL, NULL) > 1;
}

/* The daemon's socket, by the rule every fltemu client uses (protocol §1): $FLTEMU_SOCKET,
 * else $XDG_RUNTIME_DIR/fltemu.sock, else /tmp/fltemu-<uid>/fltemu.sock.  FALSE when the
 * chosen path does not fit a Unix socket address (never another rule's path instead). */
BOOL socket_path(char *out, DWORD size)
{
    char dir[FLTEMU_MAX_SOCKET_PATH + 2];
    if (GetEnvironmentVariableW(L"FLTEMU_SOCKET", NULL, 0) > 1)
        return env_utf8(L"FLTEMU_SOCKET", out, size) &&
               lstrlenA(out) <= (int)FLTEMU_MAX_SOCKET_PATH;
    if (GetEnvironmentVariableW(L"XDG_RUNTIME_DIR", NULL, 0) > 1) {
        if (!env_utf8(L"XDG_RUNTIME_DIR", dir, sizeof dir) ||
            lstrlenA(dir) + sizeof("/fltemu.sock") > FLTEMU_MAX_SOCKET_PATH + 1 ||
            size < FLTEMU_MAX_SOCKET_PATH + 1)
            return FALSE;
        wsprintfA(out, "%s/fltemu.sock", dir);
        return TRUE;
    }
    if (size < 40) return FALSE;
    wsprintfA(out, "/tmp/fltemu-%u/fltemu.sock", (unsigned)lnx_geteuid());
    return TRUE;
}

/* $FLTEMU_TRUST_UID: one more daemon user to trust, or -1. */
int trusted_uid(void)
{
    char text[16];
    DWORD n = GetEnvironmentVariableA("FLTEMU_TRUST_UID", text, sizeof text);
    if (!n || n >= sizeof text) return -1;
    for (DWORD i = 0; i < n; i++)
        if (text[i] < '0' || text[i] > '9') return -1;
    unsigned long long uid = 0;
    for (DWORD i = 0; i < n; i++) {
        uid = uid * 10 + (unsigned)(text[i] - '0');
        if (uid > 0x7FFFFFFFull) return -1; /* not a uid: trust nobody more */
    }
    return (int)uid;
}

/* Starts fltemu.sys's service if its device is missing, and waits until it runs. */
static void start_driver(void)
{
    SC_HANDLE scm = OpenSCManagerW(NULL, NULL, SC_MANAGER_CONNECT), svc;
    SERVICE_STATUS status;
    if (!scm) return;
    svc = OpenServiceW(scm, FLTEMU_SERVICE_NAME, SERVICE_START | SERVICE_QUERY_STATUS);
    if (svc) {
        StartServiceW(svc, 0, NULL);
        for (int i = 0; i < 100 && QueryServiceStatus(svc, &status) &&
                        status.dwCurrentState == SERVICE_START_PENDING;
             i++)
            Sleep(50);
        CloseServiceHandle(svc);
    }
    CloseServiceHandle(scm);
}

static NTSTATUS open_device(DWORD options, LPSECURITY_ATTRIBUTES sa, HANDLE *h)
{
    UNICODE_STRING name;
    OBJECT_ATTRIBUTES attr;
    IO_STATUS_BLOCK iosb;
    NTSTATUS st = 0;
    RtlInitUnicodeString(&name, FLTEMU_OPEN_NAME);
    InitializeObjectAttributes(&attr, &name, (sa && sa->bInheritHandle) ? OBJ_INHERIT : 0, NULL,
                               NULL);
    for (int attempt = 0; attempt < 2; attempt++) {
        /* The access and flags of fltlib's own open (semantics §3.1). */
        st = NtCreateFile(h, FLTEMU_PORT_ACCESS, &attr, &iosb, NULL, 0,
                          FILE_SHARE_READ | FILE_SHARE_WRITE, FILE_OPEN_,
                          (options & FLT_PORT_FLAG_SYNC_HANDLE) ? FILE_SYNCHRONOUS_IO_NONALERT_ : 0,
                          NULL, 0);
        if (st != STATUS_OBJECT_NAME_NOT_FOUND && st != STATUS_OBJECT_PATH_NOT_FOUND) break;
        if (attempt == 0) start_driver();
    }
    if (st == STATUS_OBJECT_PATH_NOT_FOUND) st = STATUS_OBJECT_NAME_NOT_FOUND;
    return st;
}

/* FilterConnectCommunicationPort: S_OK; 0x80070002 (no such port, no daemon, no driver),
 * 0x80070005, 0x800704D6, 0x801F000B, translate(ConnectNotify's status); E_INVALIDARG for bad
 * arguments (semantics §3.1). */
HRESULT WINAPI FilterConnectCommunicationPort(LPCWSTR lpPortName, DWORD dwOptions,
                                              LPCVOID lpContext, WORD wSizeOfContext,
                                              LPSECURITY_ATTRIBUTES lpSecurityAttributes,
                                              HANDLE *hPort)
{
    char path[FLTEMU_MAX_SOCKET_PATH + 2];
    FLTEMU_CONNECT_IN *in;
    FLTEMU_CONNECT_OUT out;
    HANDLE h;
    NTSTATUS st;
    ULONG_PTR info;
    int name_bytes;
    ULONG size;

    if (!hPort) return E_INVALIDARG;
    *hPort = INVALID_HANDLE_VALUE;
    if (!lpPortName || (lpContext == NULL) != (wSizeOfContext == 0) ||
        (dwOptions & ~(DWORD)FLT_PORT_FLAG_SYNC_HANDLE))
        return E_INVALIDARG;
    name_bytes = WideCharToMultiByte(CP_UTF8, 0, lpPortName, -1, NULL, 0, NULL, NULL);
    if (name_bytes <= 0) return E_INVALIDARG;
    name_bytes -= 1; /* without the terminator */
    if ((ULONG)name_bytes > FLTEMU_MAX_PORT_NAME) return flt_hresult(STATUS_OBJECT_NAME_NOT_FOUND);
    if (!socket_path(path, sizeof(path))) return flt_hresult(STATUS_OBJECT_NAME_NOT_FOUND);

    size = sizeof(*in) + name_bytes + wSizeOfContext + lstrlenA(path);
    in = HeapAlloc(GetProcessHeap(), 0, size);
    if (!in) return E_OUTOFMEMORY;
    in->version = FLTEMU_IOCTL_VERSION;
    in->options = dwOptions;
    in->name_bytes = (unsigned short)name_bytes;
    in->context_bytes = wSizeOfContext;
    in->path_bytes = (unsigned short)lstrlenA(path);
    in->reserved = 0;
    in->trust_uid = trusted_uid();
    WideCharToMultiByte(CP_UTF8, 0, lpPortName, -1, (char *)(in + 1), name_bytes + 1, NULL, NULL);
    if (wSizeOfContext) CopyMemory((char *)(in + 1) + name_bytes, lpContext, wSizeOfContext);
    CopyMemory((char *)(in + 1) + name_bytes + wSizeOfContext, path, in->path_bytes);

    st = open_device(dwOptions, lpSecurityAttributes, &h);
    if (NT_SUCCESS(st)) {
        st = ioctl_sync(h, IOCTL_FLTEMU_CONNECT, in, size, &out, sizeof out, &info);
        if (NT_SUCCESS(st)) {
            if (info == sizeof out) fast_attach(h, path, in->trust_uid, &out);
            *hPort = h;
        } else {
            CloseHandle(h);
        }
    }
    HeapFree(GetProcessHeap(), 0, in);
    return NT_SUCCESS(st) ? S_OK : flt_hresult(st);
}

/* FilterSendMessage: S_OK only for exactly STATUS_SUCCESS; otherwise translate(MessageNotify's
 * status), 0x80070006 once disconnected, 0x80070001 without MessageNotify, E_INVALIDARG for no
 * input.  *lpBytesReturned is the output length, 0 on errors (semantics §3.2). */
HRESULT WINAPI FilterSendMessage(HANDLE hPort, LPVOID lpInBuffer, DWORD dwInBufferSize,
                                 LPVOID lpOutBuffer, DWORD dwOutBufferSize, LPDWORD lpBytesReturned)
{
    ULONG_PTR info;
    ULONG returned;
    NTSTATUS st;
    if (!lpBytesReturned) return E_INVALIDARG;
    *lpBytesReturned = 0;
    if (!lpInBuffer || !dwInBufferSize) return E_INVALIDARG;
    if (fast_send(hPort, lpInBuffer, dwInBufferSize, lpOutBuffer, dwOutBufferSize, &st,
                  &returned)) {
        *lpBytesReturned = returned;
        return flt_hresult(st);
    }
    /* The output buffer's low address bits go with the request, so that MessageNotify's
     * alignment checks see this buffer's (protocol §7.1). */
    st = ioctl_sync(hPort, IOCTL_FLTEMU_SEND_AT((ULONG_PTR)lpOutBuffer), lpInBuffer, dwInBufferSize,
                    lpOutBuffer, lpOutBuffer ? dwOutBufferSize : 0, &info);
    if (!NT_ERROR(st)) *lpBytesReturned = (DWORD)info;
    return flt_hresult(st);
}

/* FilterGetMessage: with an OVERLAPPED, HRESULT_FROM_WIN32(ERROR_IO_PENDING) and a completion
 * of 0 / 122 / 6 / 995; without, S_OK, 0x8007007A, 0x80070006, 0x800703E3.  E_INVALIDARG for no
 * buffer; 0x80070006 at once when already disconnected (semantics §3.3). */
HRESULT WINAPI FilterGetMessage(HANDLE hPort, PFILTER_MESSAGE_HEADER lpMessageBuffer,
                                DWORD dwMessageBufferSize, LPOVERLAPPED lpOverlapped)
{
    ULONG_PTR info;
    NTSTATUS st;
    if (!lpMessageBuffer || !dwMessageBufferSize) return E_INVALIDARG;
    if (!lpOverlapped) {
        st = ioctl_sync(hPort, IOCTL_FLTEMU_GET, NULL, 0, lpMessageBuffer, dwMessageBufferSize,
                        &info);
        return flt_hresult(st);
    }
    /* As kernel32's DeviceIoControl: the OVERLAPPED is the IO_STATUS_BLOCK, and an hEvent with
     * its low bit set asks for no completion packet. */
    HANDLE event = (HANDLE)((ULONG_PTR)lpOverlapped->hEvent & ~(ULONG_PTR)1);
    PVOID apc_context = ((ULONG_PTR)lpOverlapped->hEvent & 1) ? NULL : lpOverlapped;
    lpOverlapped->Internal = (ULONG_PTR)STATUS_PENDING;
    lpOverlapped->InternalHigh = 0;
    remember_get(hPort, lpOverlapped);
    st = NtDeviceIoControlFile(hPort, event, NULL, apc_context, (PIO_STATUS_BLOCK)lpOverlapped,
                               IOCTL_FLTEMU_GET, NULL, 0, lpMessageBuffer, dwMessageBufferSize);
    if (st == STATUS_PENDING) return HRESULT_FROM_WIN32(ERROR_IO_PENDING);
    return flt_hresult(st);
}

/* FilterReplyMessage: S_OK, 0x801F0020 (no waiter), 0x800700EA (truncated), 0x80070006;
 * E_INVALIDARG below the 16-byte FILTER_REPLY_HEADER (semantics §3.4). */
HRESULT WINAPI FilterReplyMessage(HANDLE hPort, PFILTER_REPLY_HEADER lpReplyBuffer,
                                  DWORD dwReplyBufferSize)
{
    ULONG_PTR info;
    NTSTATUS st;
    if (!lpReplyBuffer || dwReplyBufferSize < sizeof(FILTER_REPLY_HEADER)) return E_INVALIDARG;
    if (fast_reply(hPort, lpReplyBuffer, dwReplyBufferSize, &st)) return flt_hresult(st);
    return flt_hresult(
        ioctl_sync(hPort, IOCTL_FLTEMU_REPLY, lpReplyBuffer, dwReplyBufferSize, NULL, 0, &info));
}

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)instance;
    switch (reason) {
    case DLL_PROCESS_ATTACH:
        g_tls = TlsAlloc();
        return g_tls != TLS_OUT_OF_INDEXES;
    case DLL_THREAD_DETACH:
        cancel_thread_gets();
        free_thread_state();
        break;
    case DLL_PROCESS_DETACH:
        if (!reserved && g_tls != TLS_OUT_OF_INDEXES) {
            free_thread_state();
            TlsFree(g_tls);
        }
        break;
    }
    return TRUE;
}
