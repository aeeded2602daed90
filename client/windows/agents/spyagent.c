/*
 * spyagent.exe: a test agent in the shape of Microsoft's minispy user program (mspyUser.c,
 * mspyLog.c).  At start-up it lists the volumes and their instances as mspyUser.c's "list"
 * command does (FilterVolumeFindFirst/Next/Close, FilterVolumeInstanceFindFirst/Next/Close,
 * FilterGetDosName), connects to \MiniSpyPort, asks for the version, then polls with
 * FilterSendMessage({GetMiniSpyLog}) into a 4096-byte buffer and prints one line per
 * LOG_RECORD.  On 0x80070103 it sleeps 200 ms; on 0x80070006 the kernel component has
 * unloaded and it exits 0; a failed connect exits 2.
 */
#include "agent.h"

#define POLL_INTERVAL 200
#define BUFFER_SIZE 4096

typedef enum { GetMiniSpyLog, GetMiniSpyVersion } MINISPY_COMMAND;

typedef struct {
    MINISPY_COMMAND Command;
    ULONG Reserved;
    UCHAR Data[];
} COMMAND_MESSAGE;

typedef struct {
    LARGE_INTEGER OriginatingTime, CompletionTime;
    ULONG_PTR DeviceObject, FileObject, Transaction, ProcessId, ThreadId, Information;
    NTSTATUS Status;
    ULONG IrpFlags, Flags;
    UCHAR CallbackMajorId, CallbackMinorId, Reserved[2];
    PVOID Arg1, Arg2, Arg3, Arg4, Arg5;
    LARGE_INTEGER Arg6;
    ULONG EcpCount, KnownEcpMask;
} RECORD_DATA;

typedef struct {
    ULONG Length, SequenceNumber, RecordType, Reserved;
    RECORD_DATA Data;
    WCHAR Name[];
} LOG_RECORD;

static void list_volumes(void)
{
    UCHAR buffer[1024];
    DWORD bytes = 0;
    HANDLE find = INVALID_HANDLE_VALUE;
    HRESULT hr =
        FilterVolumeFindFirst(FilterVolumeBasicInformation, buffer, sizeof buffer, &bytes, &find);
    int count = 0;
    while (SUCCEEDED(hr)) {
        count++;
        PFILTER_VOLUME_BASIC_INFORMATION info = (PFILTER_VOLUME_BASIC_INFORMATION)buffer;
        WCHAR dos[64];
        HANDLE inst = INVALID_HANDLE_VALUE;
        UCHAR ibuf[1024];
        WCHAR name[MAX_PATH];
        memcpy(name, info->FilterVolumeName, info->FilterVolumeNameLength);
        name[info->FilterVolumeNameLength / sizeof(WCHAR)] = 0;
        FilterGetDosName(name, dos, 64);
        if (SUCCEEDED(FilterVolumeInstanceFindFirst(name, InstanceBasicInformation, ibuf,
                                                    sizeof ibuf, &bytes, &inst)))
            FilterVolumeInstanceFindClose(inst);
        hr =
            FilterVolumeFindNext(find, FilterVolumeBasicInformation, buffer, sizeof buffer, &bytes);
    }
    if (find != INVALID_HANDLE_VALUE) FilterVolumeFindClose(find);
    out("volumes: %d (0x%08lx)", count, (unsigned long)hr);
}

int main(void)
{
    HANDLE port;
    COMMAND_MESSAGE command = {GetMiniSpyVersion, 0};
    static UCHAR buffer[BUFFER_SIZE];
    DWORD bytes = 0;
    out_init();
    list_volumes();
    HRESULT hr = FilterConnectCommunicationPort(L"\\MiniSpyPort", 0, NULL, 0, NULL, &port);
    if (FAILED(hr)) {
        out("Could not connect to filter: 0x%08lx", (unsigned long)hr);
        return 2;
    }
    hr = FilterSendMessage(port, &command, sizeof command, buffer, 4, &bytes);
    out("version 0x%08lx %u.%u", (unsigned long)hr, ((USHORT *)buffer)[0], ((USHORT *)buffer)[1]);
    command.Command = GetMiniSpyLog;
    for (;;) {
        hr = FilterSendMessage(port, &command, sizeof command, buffer, sizeof buffer, &bytes);
        if (hr == HRESULT_FROM_WIN32(ERROR_INVALID_HANDLE)) {
            out("The kernel component of minispy has unloaded. Exiting");
            CloseHandle(port);
            return 0;
        }
        if (hr == HRESULT_FROM_WIN32(ERROR_NO_MORE_ITEMS)) {
            Sleep(POLL_INTERVAL);
            continue;
        }
        if (FAILED(hr)) {
            out("UNEXPECTED ERROR 0x%08lx", (unsigned long)hr);
            Sleep(POLL_INTERVAL);
            continue;
        }
        for (DWORD at = 0; at + sizeof(LOG_RECORD) <= bytes;) {
            LOG_RECORD *r = (LOG_RECORD *)(buffer + at);
            if (r->Length < sizeof(LOG_RECORD) + sizeof(WCHAR) || at + r->Length > bytes) {
                out("bad record length %lu", r->Length);
                return 1;
            }
            out("record seq=%lu major=%u name=%ls", r->SequenceNumber, r->Data.CallbackMajorId,
                r->Name);
            at += r->Length;
        }
    }
}
