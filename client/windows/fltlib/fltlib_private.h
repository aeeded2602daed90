/* What the parts of fltemu's fltlib.dll share. */
#ifndef FLTLIB_PRIVATE_H
#define FLTLIB_PRIVATE_H

#include <windows.h>
#include <winternl.h>

/* fltlib's NTSTATUS -> HRESULT translation (semantics §3.6). */
HRESULT flt_hresult(NTSTATUS status);
/* The daemon's socket path, by the rule every fltemu client uses (protocol §1). */
BOOL socket_path(char *out, DWORD size);
/* $FLTEMU_TRUST_UID: one more daemon user to trust besides the caller's and root, or -1. */
int trusted_uid(void);

/* The access fltlib opens a port handle with (semantics §3.1). */
#define FLTEMU_PORT_ACCESS (SYNCHRONIZE | FILE_READ_DATA | FILE_WRITE_DATA)

/* fast.c: the direct path of sends and replies (protocol §5b).  fast_attach joins the
 * connection the driver made for `h`, if it can; fast_send and fast_reply return FALSE when
 * `h` has no direct path (the caller then issues the IOCTL), else the call's status. */
struct FLTEMU_CONNECT_OUT;
void fast_attach(HANDLE h, const char *path, int trust_uid, const struct FLTEMU_CONNECT_OUT *out);
BOOL fast_send(HANDLE h, const void *in, ULONG in_len, void *out, ULONG out_len, NTSTATUS *status,
               ULONG *returned);
BOOL fast_reply(HANDLE h, const void *reply, ULONG len, NTSTATUS *status);

#endif
