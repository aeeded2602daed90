/*
 * The contract between fltemu's fltlib.dll (in the agent's process) and fltemu.sys (the
 * message device hosted by winedevice.exe): device names and IOCTLs.  Both sides include
 * this header and nothing else of each other.
 *
 * On Windows, fltlib opens FltMgr's message device and issues FLT_CTL_* IOCTLs; fltmgr.sys
 * completes each IRP with an NTSTATUS.  fltemu keeps that shape: the port handle is a file
 * object of \Device\FltemuMsg, every Filter* call is one IOCTL on it, and the driver
 * completes it with the NTSTATUS that fltemu's daemon answered (docs/protocol.md).  So the
 * I/O manager (Wine's) produces the Win32 errors, IOCP packets and OVERLAPPED contents.
 *
 * All IOCTLs are METHOD_BUFFERED: the input and output are copied by the I/O manager, and
 * the driver never touches the agent's memory.
 */
#ifndef FLTEMU_IOCTL_H
#define FLTEMU_IOCTL_H

/* The message device, and the DOS name fltlib opens it by. */
#define FLTEMU_DEVICE_NAME L"\\Device\\FltemuMsg"
#define FLTEMU_DOS_NAME L"\\DosDevices\\FltemuMsg"
#define FLTEMU_OPEN_NAME L"\\??\\FltemuMsg"
/* The driver's service name (fltemu wine installs it; fltlib starts it if needed). */
#define FLTEMU_SERVICE_NAME L"fltemu"

/* CTL_CODE(FILE_DEVICE_UNKNOWN = 0x22, function, METHOD_BUFFERED = 0, FILE_ANY_ACCESS = 0) */
#define FLTEMU_CTL(fn) ((0x22u << 16) | ((fn) << 2))
/* in: FLTEMU_CONNECT_IN + name + context + socket path; out: FLTEMU_CONNECT_OUT.
 * Completes with the ConnectResult's status (or a local connect(2) failure, see below). */
#define IOCTL_FLTEMU_CONNECT FLTEMU_CTL(0x801u)
/* in: the message (FilterSendMessage's lpInBuffer); out: lpOutBuffer.
 * Completes with MessageNotify's status; Information = bytes of output.
 * IOCTL_FLTEMU_SEND_AT(low) is the same send for an lpOutBuffer whose address modulo 256 is
 * `low` (the daemon's SendRequest.out_address, for MessageNotify's IS_ALIGNED checks,
 * protocol §7.1).  METHOD_BUFFERED hides the caller's buffer from the driver, so the low bits
 * travel in the function number, 0x900 to 0x9FF; IOCTL_FLTEMU_SEND counts as aligned. */
#define IOCTL_FLTEMU_SEND FLTEMU_CTL(0x802u)
#define IOCTL_FLTEMU_SEND_AT(low) FLTEMU_CTL(0x900u | ((unsigned)(low)&0xFFu))
#define FLTEMU_IS_SEND_AT(code) (((code) & ~(0xFFu << 2)) == FLTEMU_CTL(0x900u))
#define FLTEMU_SEND_AT_LOW(code) (((code) >> 2) & 0xFFu)
/* in: nothing; out: FILTER_MESSAGE_HEADER + message.  Information = 16 + message length
 * on success, the required size on STATUS_BUFFER_TOO_SMALL.  Cancellable. */
#define IOCTL_FLTEMU_GET FLTEMU_CTL(0x803u)
/* in: FILTER_REPLY_HEADER + payload (at least 16 bytes); out: nothing. */
#define IOCTL_FLTEMU_REPLY FLTEMU_CTL(0x804u)

/* Version of this contract; the driver refuses a connect of another version with
 * STATUS_REVISION_MISMATCH, so a DLL and driver from different builds never mix. */
#define FLTEMU_IOCTL_VERSION 4u

/* Limits checked by both sides.  The context is a WORD; the socket path fits sun_path. */
#define FLTEMU_MAX_CONTEXT 65535u
#define FLTEMU_MAX_PORT_NAME 4096u
#define FLTEMU_MAX_SOCKET_PATH 107u

#pragma pack(push, 1)
typedef struct FLTEMU_CONNECT_IN {
    unsigned int version;      /* FLTEMU_IOCTL_VERSION */
    unsigned int options;      /* dwOptions, passed to the daemon's Connect */
    unsigned short name_bytes; /* UTF-8 port name, no terminator */
    unsigned short context_bytes;
    unsigned short path_bytes; /* Unix socket path, no terminator */
    unsigned short reserved;
    int trust_uid; /* FLTEMU_TRUST_UID: a daemon user to trust besides the
                      caller's and root (-1: none) */
    /* followed by: name, context, path */
} FLTEMU_CONNECT_IN;

/* What a successful connect tells the DLL: the token with which its own socket joins the
 * connection (protocol §5b; all zero when the daemon gave none) and the daemon's payload
 * limit.  The DLL then makes FilterSendMessage and FilterReplyMessage itself, over that
 * socket, without an IOCTL (docs/wine.md, "How a call travels"). */
typedef struct FLTEMU_CONNECT_OUT {
    unsigned char token[16]; /* WIRE_ATTACH_TOKEN_BYTES */
    unsigned long long max_message;
} FLTEMU_CONNECT_OUT;
#pragma pack(pop)

#endif
