/*
 * scanagent.exe: a test agent in the shape of Microsoft's scanner user program (scanUser.c):
 * one port handle bound to an I/O completion port, THREADS x REQUESTS overlapped
 * FilterGetMessage calls, worker threads that take completions with GetQueuedCompletionStatus,
 * find their SCANNER_MESSAGE with CONTAINING_RECORD, scan for "foul", reply by message id with
 * a 17-byte SCANNER_REPLY_MESSAGE and re-issue the get on the same buffer.
 *
 *   scanagent.exe [-t THREADS] [-r REQUESTS] [-p PORT] [-n COUNT] [-w 1]
 *
 * Prints "connected to PORT" once its gets are posted, then one verdict line per message; at the
 * end the number of replies and of failed replies.  With -w 1 each reply waits for a line on stdin
 * (a scan that takes as long as the caller wants).  Exits 0 when the port is disconnected (the
 * filter unloads; a get or a reply fails with ERROR_INVALID_HANDLE, as scanUser.c reads either) or
 * after COUNT messages, 1 on any other failure, 2 when the connect fails.
 */
#include "agent.h"

#define SCANNER_READ_BUFFER_SIZE 1024
#define MAX_THREADS 64

typedef struct {
    ULONG BytesToScan;
    ULONG Reserved;
    UCHAR Contents[SCANNER_READ_BUFFER_SIZE];
} SCANNER_NOTIFICATION;

#pragma pack(push, 1)
typedef struct {
    FILTER_REPLY_HEADER ReplyHeader;
    UCHAR SafeToOpen;
} SCANNER_REPLY_MESSAGE;
#pragma pack(pop)

typedef struct {
    FILTER_MESSAGE_HEADER MessageHeader;
    SCANNER_NOTIFICATION Notification;
    OVERLAPPED Ovlp;
} SCANNER_MESSAGE;

static HANDLE port, completion;
static volatile LONG replies, reply_failures, remaining = -1;
static int wait_for_stdin;
static CRITICAL_SECTION stdin_lock;

static BOOL scan(const UCHAR *buf, ULONG len)
{
    for (ULONG i = 0; i + 4 <= len; i++)
        if (!memcmp(buf + i, "foul", 4)) return TRUE;
    return FALSE;
}

static DWORD WINAPI worker(void *arg)
{
    (void)arg;
    for (;;) {
        DWORD bytes;
        ULONG_PTR key;
        LPOVERLAPPED ov;
        BOOL ok = GetQueuedCompletionStatus(completion, &bytes, &key, &ov, INFINITE);
        if (!ov) return 0; /* the completion port was closed */
        SCANNER_MESSAGE *msg = CONTAINING_RECORD(ov, SCANNER_MESSAGE, Ovlp);
        if (!ok) {
            DWORD err = GetLastError();
            if (err == ERROR_INVALID_HANDLE) {
                out("Scanner: Port is disconnected, probably due to scanner filter unloading.");
                ExitProcess(0);
            }
            out("Scanner: Unknown error occurred. Error = 0x%lx", err);
            ExitProcess(1);
        }
        ULONG n = msg->Notification.BytesToScan;
        if (n > SCANNER_READ_BUFFER_SIZE) {
            out("Scanner: BytesToScan %lu is over the buffer", n);
            ExitProcess(3);
        }
        BOOL foul = scan(msg->Notification.Contents, n);
        SCANNER_REPLY_MESSAGE reply;
        memset(&reply, 0, sizeof reply);
        reply.ReplyHeader.Status = 0;
        reply.ReplyHeader.MessageId = msg->MessageHeader.MessageId;
        reply.SafeToOpen = !foul;
        out("Scanner: message id %llu (%lu bytes): scanned %lu bytes: %s",
            (unsigned long long)msg->MessageHeader.MessageId, bytes, n, foul ? "unsafe" : "safe");
        if (wait_for_stdin) {
            char line[16];
            EnterCriticalSection(&stdin_lock);
            if (!fgets(line, sizeof line, stdin)) wait_for_stdin = 0;
            LeaveCriticalSection(&stdin_lock);
        }
        HRESULT hr = FilterReplyMessage(port, &reply.ReplyHeader, sizeof reply);
        if (SUCCEEDED(hr)) {
            InterlockedIncrement(&replies);
        } else {
            InterlockedIncrement(&reply_failures);
            out("Scanner: Error replying message. Error = 0x%lx", (unsigned long)hr);
            /* The filter unloaded while this message was scanned: scanUser.c's worker leaves
             * its loop and reads ERROR_INVALID_HANDLE as the unload, as for a failed get. */
            if (hr == HRESULT_FROM_WIN32(ERROR_INVALID_HANDLE)) {
                out("Scanner: Port is disconnected, probably due to scanner filter unloading.");
                ExitProcess(0);
            }
            if (hr != (HRESULT)0x801F0020) ExitProcess(1);
        }
        if (remaining > 0 && InterlockedDecrement(&remaining) == 0) {
            out("replies %ld failures %ld", replies, reply_failures);
            ExitProcess(0);
        }
        memset(&msg->Ovlp, 0, sizeof msg->Ovlp);
        hr = FilterGetMessage(port, &msg->MessageHeader, FIELD_OFFSET(SCANNER_MESSAGE, Ovlp),
                              &msg->Ovlp);
        if (hr == HRESULT_FROM_WIN32(ERROR_INVALID_HANDLE)) {
            out("Scanner: Port is disconnected, probably due to scanner filter unloading.");
            ExitProcess(0);
        }
        if (hr != HRESULT_FROM_WIN32(ERROR_IO_PENDING)) {
            out("Scanner: FilterGetMessage failed. Error = 0x%lx", (unsigned long)hr);
            ExitProcess(1);
        }
    }
}

int main(int argc, char **argv)
{
    int threads = 2, requests = 5;
    const char *name = "\\ScannerPort";
    WCHAR wname[256];
    HANDLE workers[MAX_THREADS];
    out_init();
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-t"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-r"))
            requests = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-p"))
            name = argv[i + 1];
        else if (!strcmp(argv[i], "-n"))
            remaining = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "-w"))
            wait_for_stdin = atoi(argv[i + 1]);
    }
    InitializeCriticalSection(&stdin_lock);
    if (threads < 1 || threads > MAX_THREADS || requests < 1) return 2;
    MultiByteToWideChar(CP_UTF8, 0, name, -1, wname, 256);
    HRESULT hr = FilterConnectCommunicationPort(wname, 0, NULL, 0, NULL, &port);
    if (FAILED(hr)) {
        out("ERROR: Connecting to filter port: 0x%08lx", (unsigned long)hr);
        return 2;
    }
    completion = CreateIoCompletionPort(port, NULL, 0, threads);
    if (!completion) {
        out("ERROR: Creating completion port: %lu", GetLastError());
        return 1;
    }
    for (int i = 0; i < threads; i++) {
        workers[i] = CreateThread(NULL, 0, worker, NULL, 0, NULL);
        for (int j = 0; j < requests; j++) {
            SCANNER_MESSAGE *msg = calloc(1, sizeof *msg);
            hr = FilterGetMessage(port, &msg->MessageHeader, FIELD_OFFSET(SCANNER_MESSAGE, Ovlp),
                                  &msg->Ovlp);
            if (hr != HRESULT_FROM_WIN32(ERROR_IO_PENDING)) {
                out("ERROR: FilterGetMessage: 0x%08lx", (unsigned long)hr);
                return 1;
            }
        }
    }
    /* Ready once every get is posted: a test that sends and unloads at this line cannot
     * make a get of the start fail (scanUser.c would stop with that error). */
    out("connected to %s", name);
    WaitForMultipleObjects(threads, workers, TRUE, INFINITE);
    return 0;
}
