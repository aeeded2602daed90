/*
 * avagent.exe: a test agent in the shape of Microsoft's avscan user program (userscan.c):
 * two ports with a 4-byte connection context each (scan, abort); WORKERS threads taking
 * overlapped 40-byte FilterGetMessage completions from an I/O completion port; a thread doing
 * synchronous gets on the abort port.  For each scan request a worker replies with its thread
 * id (20-byte reply), asks for a section of the file (AvCmdCreateSectionForDataScan), maps it
 * with MapViewOfFile, looks for "foul", unmaps and closes it, and reports the result
 * (AvCmdCloseSectionForDataScan).  On "q" from stdin it shuts down as userscan.c does:
 * CancelIoEx(port, NULL) on both ports (the pending gets complete with ERROR_OPERATION_ABORTED),
 * then closes the completion port (on Windows a worker still waiting sees ERROR_ABANDONED_WAIT_0;
 * Wine 8.0 does not wake it, which the agent reports).
 *
 *   avagent.exe [WORKERS]
 */
#include "agent.h"

#define SCAN_PORT L"\\MicrosoftAvSampleFilterScanPort"
#define ABORT_PORT L"\\MicrosoftAvSampleFilterAbortPort"
#define MAX_WORKERS 16

typedef enum { AvConnectForScan = 1, AvConnectForAbort } AVSCAN_CONNECTION_TYPE;
typedef enum {
    AvIsFileModified,
    AvCmdCreateSectionForDataScan,
    AvCmdCloseSectionForDataScan
} AVSCAN_COMMAND;
typedef enum { AvMsgStartScanning, AvMsgAbortScanning, AvMsgFilterUnloading } AVSCAN_MESSAGE;
typedef enum { AvScanResultUndetermined, AvScanResultInfected, AvScanResultClean } AVSCAN_RESULT;

typedef struct {
    AVSCAN_CONNECTION_TYPE Type;
} AV_CONNECTION_CONTEXT;

typedef struct {
    AVSCAN_MESSAGE Message;
    ULONG Reason;
    LONGLONG ScanId;
    ULONG ScanThreadId;
} AV_SCANNER_NOTIFICATION;

typedef struct {
    AVSCAN_COMMAND Command;
    LONGLONG ScanId;
    ULONG ScanThreadId;
    union {
        HANDLE FileHandle;
        AVSCAN_RESULT ScanResult;
    };
} COMMAND_MESSAGE;

typedef struct {
    FILTER_MESSAGE_HEADER MessageHeader;
    AV_SCANNER_NOTIFICATION Notification;
    OVERLAPPED Ovlp;
} SCANNER_MESSAGE;

typedef struct {
    FILTER_REPLY_HEADER ReplyHeader;
    ULONG ThreadId;
} SCANNER_REPLY_MESSAGE;

static HANDLE scan_port, abort_port, completion;

static AVSCAN_RESULT scan_section(LONGLONG scan_id)
{
    COMMAND_MESSAGE cmd = {0};
    HANDLE section = NULL;
    DWORD got = 0;
    cmd.Command = AvCmdCreateSectionForDataScan;
    cmd.ScanId = scan_id;
    cmd.ScanThreadId = GetCurrentThreadId();
    HRESULT hr = FilterSendMessage(scan_port, &cmd, sizeof cmd, &section, sizeof section, &got);
    if (FAILED(hr)) {
        out("scan %lld: create section 0x%08lx", scan_id, (unsigned long)hr);
        return AvScanResultUndetermined;
    }
    const char *view = MapViewOfFile(section, FILE_MAP_READ, 0, 0, 0);
    AVSCAN_RESULT result = AvScanResultUndetermined;
    if (view) {
        MEMORY_BASIC_INFORMATION info;
        VirtualQuery(view, &info, sizeof info);
        result = AvScanResultClean;
        for (SIZE_T i = 0; i + 4 <= info.RegionSize; i++)
            if (!memcmp(view + i, "foul", 4)) result = AvScanResultInfected;
        UnmapViewOfFile(view);
    } else {
        out("scan %lld: MapViewOfFile failed: %lu", scan_id, GetLastError());
    }
    CloseHandle(section);
    return result;
}

static DWORD WINAPI worker(void *arg)
{
    (void)arg;
    for (;;) {
        DWORD bytes;
        ULONG_PTR key;
        LPOVERLAPPED ov = NULL;
        BOOL ok = GetQueuedCompletionStatus(completion, &bytes, &key, &ov, INFINITE);
        DWORD err = ok ? 0 : GetLastError();
        if (!ov) {
            out("worker: completion port gone, error %lu", err);
            return 0;
        }
        if (!ok) {
            out("worker: get completed with error %lu", err);
            if (err == ERROR_OPERATION_ABORTED || err == ERROR_INVALID_HANDLE) continue;
            return 1;
        }
        SCANNER_MESSAGE *msg = CONTAINING_RECORD(ov, SCANNER_MESSAGE, Ovlp);
        if (msg->Notification.Message == AvMsgStartScanning) {
            SCANNER_REPLY_MESSAGE reply = {0};
            reply.ReplyHeader.MessageId = msg->MessageHeader.MessageId;
            reply.ThreadId = GetCurrentThreadId();
            HRESULT hr = FilterReplyMessage(scan_port, &reply.ReplyHeader,
                                            sizeof reply.ReplyHeader + sizeof reply.ThreadId);
            if (FAILED(hr))
                out("scan %lld: reply 0x%08lx", msg->Notification.ScanId, (unsigned long)hr);
            AVSCAN_RESULT result = scan_section(msg->Notification.ScanId);
            COMMAND_MESSAGE cmd = {0};
            DWORD got;
            cmd.Command = AvCmdCloseSectionForDataScan;
            cmd.ScanId = msg->Notification.ScanId;
            cmd.ScanThreadId = GetCurrentThreadId();
            cmd.ScanResult = result;
            hr = FilterSendMessage(scan_port, &cmd, sizeof cmd, NULL, 0, &got);
            out("scan %lld: %s (close 0x%08lx)", msg->Notification.ScanId,
                result == AvScanResultInfected ? "infected"
                : result == AvScanResultClean  ? "clean"
                                               : "undetermined",
                (unsigned long)hr);
        }
        memset(&msg->Ovlp, 0, sizeof msg->Ovlp);
        HRESULT hr = FilterGetMessage(scan_port, &msg->MessageHeader,
                                      FIELD_OFFSET(SCANNER_MESSAGE, Ovlp), &msg->Ovlp);
        if (hr != HRESULT_FROM_WIN32(ERROR_IO_PENDING))
            out("worker: re-arm 0x%08lx", (unsigned long)hr);
    }
}

static DWORD WINAPI abort_listener(void *arg)
{
    (void)arg;
    for (;;) {
        struct {
            FILTER_MESSAGE_HEADER MessageHeader;
            AV_SCANNER_NOTIFICATION Notification;
        } msg;
        HRESULT hr = FilterGetMessage(abort_port, &msg.MessageHeader, sizeof msg, NULL);
        if (FAILED(hr)) {
            out("abort listener: 0x%08lx", (unsigned long)hr);
            return 0;
        }
        out("abort listener: message %d for scan %lld", msg.Notification.Message,
            msg.Notification.ScanId);
        if (msg.MessageHeader.MessageId) {
            SCANNER_REPLY_MESSAGE reply = {0};
            reply.ReplyHeader.MessageId = msg.MessageHeader.MessageId;
            reply.ThreadId = GetCurrentThreadId();
            FilterReplyMessage(abort_port, &reply.ReplyHeader,
                               sizeof reply.ReplyHeader + sizeof reply.ThreadId);
        }
    }
}

int main(int argc, char **argv)
{
    int workers = argc > 1 ? atoi(argv[1]) : 2;
    HANDLE threads[MAX_WORKERS + 1];
    AV_CONNECTION_CONTEXT ctx;
    char line[64];
    out_init();
    if (workers < 1 || workers > MAX_WORKERS) return 2;
    ctx.Type = AvConnectForScan;
    HRESULT hr = FilterConnectCommunicationPort(SCAN_PORT, 0, &ctx, sizeof ctx, NULL, &scan_port);
    if (FAILED(hr)) {
        out("connect scan port 0x%08lx", (unsigned long)hr);
        return 2;
    }
    ctx.Type = AvConnectForAbort;
    hr = FilterConnectCommunicationPort(ABORT_PORT, 0, &ctx, sizeof ctx, NULL, &abort_port);
    if (FAILED(hr)) {
        out("connect abort port 0x%08lx", (unsigned long)hr);
        return 2;
    }
    completion = CreateIoCompletionPort(scan_port, NULL, 0, workers);
    for (int i = 0; i < workers; i++) {
        SCANNER_MESSAGE *msg = calloc(1, sizeof *msg);
        hr = FilterGetMessage(scan_port, &msg->MessageHeader, FIELD_OFFSET(SCANNER_MESSAGE, Ovlp),
                              &msg->Ovlp);
        if (hr != HRESULT_FROM_WIN32(ERROR_IO_PENDING)) {
            out("get 0x%08lx", (unsigned long)hr);
            return 1;
        }
        threads[i] = CreateThread(NULL, 0, worker, NULL, 0, NULL);
    }
    threads[workers] = CreateThread(NULL, 0, abort_listener, NULL, 0, NULL);
    out("connected, %d workers", workers);
    while (fgets(line, sizeof line, stdin) && line[0] != 'q') {}
    /* userscan.c's shutdown: cancel everything pending, then close the completion port. */
    out("cancel scan port %d", CancelIoEx(scan_port, NULL));
    out("cancel abort port %d", CancelIoEx(abort_port, NULL));
    WaitForSingleObject(threads[workers], 10000);
    Sleep(500); /* the workers take their ERROR_OPERATION_ABORTED completions */
    CloseHandle(completion);
    /* Windows wakes them with ERROR_ABANDONED_WAIT_0; Wine 8.0 leaves them waiting. */
    DWORD waited = WaitForMultipleObjects(workers, threads, TRUE, 2000);
    if (waited == WAIT_TIMEOUT) out("workers still waiting after the completion port closed");
    CloseHandle(scan_port);
    CloseHandle(abort_port);
    out("bye");
    return 0;
}
