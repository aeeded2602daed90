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

#endif
