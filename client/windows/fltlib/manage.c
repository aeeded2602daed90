/*
 * Filter management: FilterFind*, FilterCreate/GetInformation/Close, FilterLoad/Unload,
 * FilterAttach/Detach, instances and volumes, answered as a Windows machine with fltemu's
 * loaded filters would answer.
 *
 * The filters are the daemon's: the DLL asks for them with a control connection (the
 * `ports` command, protocol §17), as `fltemu ports` does, and unloads one with `unload`. The daemon
 * allows control connections to root and its own user only, as Windows allows these calls to
 * administrators only: anyone else gets E_ACCESSDENIED. With no daemon there is no filter.
 * fltemu emulates no volume, so there is no volume and no instance to find or attach.
 */
#define WIN32_LEAN_AND_MEAN
#define WIN32_NO_STATUS
#include <windows.h>
#undef WIN32_NO_STATUS
#include <ntstatus.h>
#include <fltuser.h>

#include "../include/fltemu_ioctl.h"
#include "../include/linux_syscall.h"
#include "../include/wire.h"
#include "fltlib_private.h"

/* Not declared by every fltuser.h, exported by Windows' fltlib all the same. */
HRESULT WINAPI FilterVolumeClose(HANDLE hVolume);

#define NO_MORE_ITEMS HRESULT_FROM_WIN32(ERROR_NO_MORE_ITEMS)
/* A control answer larger than this is refused (the filter listing is small). */
#define MAX_CONTROL_ANSWER (64u << 20)
/* A filter name as UTF-8: FILTER_NAME_MAX_CHARS UTF-16 units, at most 3 bytes each. */
#define MAX_NAME_BYTES (FILTER_NAME_MAX_CHARS * 3)
/* Seconds a control call may take before the DLL gives up on the daemon. */
#define CONTROL_TIMEOUT 10
#define MAX_FILTERS 256
#define LIST_MAGIC 0x464c7473u   /* a find handle */
#define FILTER_MAGIC 0x464c7468u /* a FilterCreate handle */

/* A find or filter handle: the daemon's filter names at the time of the call. */
struct filter_list {
    struct filter_list *next_live; /* the live handles, to tell them from any other value */
    DWORD magic;
    ULONG count, next;
    WCHAR *names[MAX_FILTERS];
};

static SRWLOCK live_lock = SRWLOCK_INIT;
static struct filter_list *live;

static void free_list(struct filter_list *list)
{
    for (ULONG i = 0; i < list->count; i++) HeapFree(GetProcessHeap(), 0, list->names[i]);
    HeapFree(GetProcessHeap(), 0, list);
}

/* Hands `list` out as a handle of kind `magic`. */
static HANDLE publish(struct filter_list *list, DWORD magic)
{
    list->magic = magic;
    AcquireSRWLockExclusive(&live_lock);
    list->next_live = live;
    live = list;
    ReleaseSRWLockExclusive(&live_lock);
    return list;
}

/* The list behind a handle we handed out, with live_lock held exclusively (release it with
 * ReleaseSRWLockExclusive), or NULL, unlocked, for any other value. */
static struct filter_list *lock_list(HANDLE h, DWORD magic)
{
    AcquireSRWLockExclusive(&live_lock);
    for (struct filter_list *l = live; l; l = l->next_live)
        if (l == h && l->magic == magic) return l;
    ReleaseSRWLockExclusive(&live_lock);
    return NULL;
}

/* Takes a handed-out list back (FilterFindClose, FilterClose): E_HANDLE if it is not one, or
 * no longer is (a second close). */
static HRESULT close_list(HANDLE h, DWORD magic)
{
    struct filter_list *found = NULL;
    AcquireSRWLockExclusive(&live_lock);
    for (struct filter_list **p = &live; *p; p = &(*p)->next_live) {
        if (*p == h && (*p)->magic == magic) {
            found = *p;
            *p = found->next_live;
            break;
        }
    }
    ReleaseSRWLockExclusive(&live_lock);
    if (!found) return E_HANDLE;
    free_list(found);
    return S_OK;
}

static BOOL send_all(int fd, const unsigned char *p, unsigned long long len)
{
    while (len) {
        long long n = lnx_send(fd, p, len);
        if (n <= 0) return FALSE;
        p += n;
        len -= (unsigned long long)n;
    }
    return TRUE;
}

/* How a control call went, besides an answer. */
enum control_outcome { CONTROL_ANSWERED, CONTROL_NO_DAEMON, CONTROL_DENIED, CONTROL_FAILED };

/* One control command; on CONTROL_ANSWERED, *body is its ControlResult (HeapFree it).  No
 * daemon at the socket (ENOENT, ECONNREFUSED) is CONTROL_NO_DAEMON: then there is no filter. */
static enum control_outcome control(const char *command, const char *target, unsigned char **body,
                                    unsigned long long *len)
{
    char path[FLTEMU_MAX_SOCKET_PATH + 2];
    struct lnx_sockaddr_un addr;
    unsigned char frame[64 + MAX_NAME_BYTES], hdr[4];
    enum control_outcome outcome = CONTROL_FAILED;
    long long fd, r;
    size_t target_len = lstrlenA(target), path_len;
    *body = NULL;
    if (target_len > MAX_NAME_BYTES || !socket_path(path, sizeof path)) return CONTROL_FAILED;
    path_len = lstrlenA(path);
    ZeroMemory(&addr, sizeof addr);
    addr.sun_family = LNX_AF_UNIX;
    CopyMemory(addr.sun_path, path, path_len);
    fd = lnx_socket_unix();
    if (fd < 0) return CONTROL_FAILED;
    lnx_set_timeouts((int)fd, CONTROL_TIMEOUT);
    r = lnx_connect((int)fd, &addr, (unsigned)(2 + path_len));
    if (r == -LNX_ENOENT || r == -LNX_ECONNREFUSED) {
        outcome = CONTROL_NO_DAEMON;
    } else if (r == -LNX_EACCES || r == -LNX_EPERM) {
        outcome = CONTROL_DENIED;
    } else if (r == 0 && !lnx_trusted_peer(lnx_peer_uid((int)fd), trusted_uid())) {
        outcome = CONTROL_DENIED; /* a daemon run by a user we do not trust (protocol §1) */
    } else if (r == 0) {
        struct wire_out o = {frame + 4};
        wire_put_array(&o, 4);
        wire_put_uint(&o, WIRE_CONTROL);
        wire_put_uint(&o, WIRE_PROTOCOL_VERSION);
        wire_put_str(&o, command, lstrlenA(command));
        wire_put_str(&o, target, target_len);
        if (send_all((int)fd, frame, wire_finish(&o, frame)) && lnx_read_full((int)fd, hdr, 4)) {
            *len = hdr[0] | (hdr[1] << 8) | (hdr[2] << 16) | ((unsigned long long)hdr[3] << 24);
            if (*len && *len <= MAX_CONTROL_ANSWER &&
                (*body = HeapAlloc(GetProcessHeap(), 0, *len))) {
                if (lnx_read_full((int)fd, *body, *len)) {
                    outcome = CONTROL_ANSWERED;
                } else {
                    HeapFree(GetProcessHeap(), 0, *body);
                    *body = NULL;
                }
            }
        }
    }
    lnx_close((int)fd);
    return outcome;
}

/* The ControlResult's status; leaves `in` at its `filters` array. */
static BOOL control_status(struct wire_in *in, unsigned int *status)
{
    unsigned n = wire_get_array(in);
    if (n < 3 || wire_get_uint(in, 0xFF) != WIRE_CONTROL_RESULT) return FALSE;
    wire_skip(in, 0); /* version */
    *status = (unsigned int)wire_get_uint(in, 0xFFFFFFFFull);
    if (n < 6) return !in->bad;
    wire_skip(in, 0); /* message */
    wire_skip(in, 0); /* reply */
    return !in->bad;
}

static WCHAR *to_wide(const unsigned char *utf8, unsigned long long len)
{
    int n = MultiByteToWideChar(CP_UTF8, 0, (const char *)utf8, (int)len, NULL, 0);
    WCHAR *w = HeapAlloc(GetProcessHeap(), 0, (n + 1) * sizeof(WCHAR));
    if (!w) return NULL;
    MultiByteToWideChar(CP_UTF8, 0, (const char *)utf8, (int)len, w, n);
    w[n] = 0;
    return w;
}

/* The daemon's registered filters.  S_OK with an empty list when there is no daemon. */
static HRESULT daemon_filters(struct filter_list **out)
{
    struct filter_list *list = HeapAlloc(GetProcessHeap(), HEAP_ZERO_MEMORY, sizeof *list);
    unsigned long long len = 0;
    unsigned char *body;
    unsigned int status = 0;
    enum control_outcome outcome;
    if (!list) return E_OUTOFMEMORY;
    *out = list;
    outcome = control("ports", "", &body, &len);
    if (outcome == CONTROL_NO_DAEMON) return S_OK;
    if (outcome != CONTROL_ANSWERED) {
        free_list(list);
        *out = NULL;
        return outcome == CONTROL_DENIED ? E_ACCESSDENIED : E_FAIL;
    }
    struct wire_in in = {body, body + len, 0};
    HRESULT hr = S_OK;
    if (!control_status(&in, &status)) {
        hr = E_FAIL;
    } else if (status) {
        hr = status == (unsigned)STATUS_ACCESS_DENIED ? E_ACCESSDENIED
                                                      : flt_hresult((NTSTATUS)status);
    } else if (in.p < in.end) {
        unsigned filters = wire_get_array(&in);
        for (unsigned i = 0; i < filters && !in.bad; i++) {
            const unsigned char *name = NULL, *state = NULL;
            unsigned long long name_len = 0, state_len = 0, key_len;
            unsigned keys = wire_get_map(&in);
            for (unsigned k = 0; k < keys && !in.bad; k++) {
                const unsigned char *key = wire_get_bytes(&in, 1, &key_len);
                if (key_len == 4 && !memcmp(key, "name", 4))
                    name = wire_get_bytes(&in, 1, &name_len);
                else if (key_len == 5 && !memcmp(key, "state", 5))
                    state = wire_get_bytes(&in, 1, &state_len);
                else
                    wire_skip(&in, 0);
            }
            if (!in.bad && name && state && state_len == 10 && !memcmp(state, "registered", 10) &&
                list->count < MAX_FILTERS && (list->names[list->count] = to_wide(name, name_len)))
                list->count++;
        }
        if (in.bad) hr = E_FAIL;
    }
    HeapFree(GetProcessHeap(), 0, body);
    if (FAILED(hr)) {
        free_list(list);
        *out = NULL;
    }
    return hr;
}

/* Is `name` one of the daemon's filters?  S_OK yes, S_FALSE no, or the failure. */
static HRESULT is_loaded(LPCWSTR name)
{
    struct filter_list *list;
    HRESULT hr = daemon_filters(&list);
    if (FAILED(hr)) return hr;
    hr = S_FALSE;
    for (ULONG i = 0; i < list->count; i++)
        if (!lstrcmpiW(list->names[i], name)) hr = S_OK;
    free_list(list);
    return hr;
}

/* One filter's information in `dwInformationClass`'s layout: one entry, no altitude (fltemu's
 * filters have none), no instance (there is no volume). */
static HRESULT filter_information(LPCWSTR name, FILTER_INFORMATION_CLASS cls, LPVOID buffer,
                                  DWORD size, LPDWORD returned)
{
    USHORT name_bytes = (USHORT)(lstrlenW(name) * sizeof(WCHAR));
    DWORD header, need;
    switch (cls) {
    case FilterFullInformation:
        header = FIELD_OFFSET(FILTER_FULL_INFORMATION, FilterNameBuffer);
        break;
    case FilterAggregateBasicInformation:
        header = sizeof(FILTER_AGGREGATE_BASIC_INFORMATION);
        break;
    case FilterAggregateStandardInformation:
        header = sizeof(FILTER_AGGREGATE_STANDARD_INFORMATION);
        break;
    default:
        return E_INVALIDARG;
    }
    need = header + name_bytes;
    *returned = need;
    if (size < need || !buffer) return HRESULT_FROM_WIN32(ERROR_INSUFFICIENT_BUFFER);
    ZeroMemory(buffer, need);
    CopyMemory((BYTE *)buffer + header, name, name_bytes);
    if (cls == FilterFullInformation) {
        ((PFILTER_FULL_INFORMATION)buffer)->FilterNameLength = name_bytes;
    } else if (cls == FilterAggregateBasicInformation) {
        PFILTER_AGGREGATE_BASIC_INFORMATION info = buffer;
        info->Flags = FLTFL_AGGREGATE_INFO_IS_MINIFILTER;
        info->Type.MiniFilter.FilterNameLength = name_bytes;
        info->Type.MiniFilter.FilterNameBufferOffset = (USHORT)header;
        info->Type.MiniFilter.FilterAltitudeBufferOffset = (USHORT)need;
    } else {
        PFILTER_AGGREGATE_STANDARD_INFORMATION info = buffer;
        info->Flags = FLTFL_ASI_IS_MINIFILTER;
        info->Type.MiniFilter.FilterNameLength = name_bytes;
        info->Type.MiniFilter.FilterNameBufferOffset = (USHORT)header;
        info->Type.MiniFilter.FilterAltitudeBufferOffset = (USHORT)need;
    }
    return S_OK;
}

/* FilterFindFirst: the first of the daemon's filters; HRESULT_FROM_WIN32(ERROR_NO_MORE_ITEMS)
 * when there is none, ERROR_INSUFFICIENT_BUFFER with the size needed, E_ACCESSDENIED. */
HRESULT WINAPI FilterFindFirst(FILTER_INFORMATION_CLASS dwInformationClass, LPVOID lpBuffer,
                               DWORD dwBufferSize, LPDWORD lpBytesReturned, LPHANDLE lpFilterFind)
{
    struct filter_list *list;
    HRESULT hr;
    if (!lpBytesReturned || !lpFilterFind) return E_INVALIDARG;
    *lpBytesReturned = 0;
    *lpFilterFind = INVALID_HANDLE_VALUE;
    if (FAILED(hr = daemon_filters(&list))) return hr;
    if (!list->count) {
        free_list(list);
        return NO_MORE_ITEMS;
    }
    hr = filter_information(list->names[0], dwInformationClass, lpBuffer, dwBufferSize,
                            lpBytesReturned);
    if (FAILED(hr)) {
        free_list(list);
        return hr;
    }
    list->next = 1;
    *lpFilterFind = publish(list, LIST_MAGIC);
    return S_OK;
}

/* FilterFindNext: the next filter; ERROR_NO_MORE_ITEMS after the last; E_HANDLE. */
HRESULT WINAPI FilterFindNext(HANDLE hFilterFind, FILTER_INFORMATION_CLASS dwInformationClass,
                              LPVOID lpBuffer, DWORD dwBufferSize, LPDWORD lpBytesReturned)
{
    struct filter_list *list;
    HRESULT hr = NO_MORE_ITEMS;
    if (!lpBytesReturned) return E_INVALIDARG;
    *lpBytesReturned = 0;
    if (!(list = lock_list(hFilterFind, LIST_MAGIC))) return E_HANDLE;
    if (list->next < list->count) {
        hr = filter_information(list->names[list->next], dwInformationClass, lpBuffer, dwBufferSize,
                                lpBytesReturned);
        if (SUCCEEDED(hr)) list->next++;
    }
    ReleaseSRWLockExclusive(&live_lock);
    return hr;
}

HRESULT WINAPI FilterFindClose(HANDLE hFilterFind)
{
    return close_list(hFilterFind, LIST_MAGIC);
}

/* FilterCreate: a handle on a loaded filter, or ERROR_FLT_FILTER_NOT_FOUND. */
HRESULT WINAPI FilterCreate(LPCWSTR lpFilterName, HFILTER *hFilter)
{
    struct filter_list *list;
    HRESULT hr;
    if (!hFilter || !lpFilterName) return E_INVALIDARG;
    *hFilter = INVALID_HANDLE_VALUE;
    if (FAILED(hr = daemon_filters(&list))) return hr;
    for (ULONG i = 0; i < list->count; i++) {
        if (!lstrcmpiW(list->names[i], lpFilterName)) {
            WCHAR *found = list->names[i];
            list->names[i] = list->names[0];
            list->names[0] = found;
            *hFilter = publish(list, FILTER_MAGIC);
            return S_OK;
        }
    }
    free_list(list);
    return ERROR_FLT_FILTER_NOT_FOUND;
}

HRESULT WINAPI FilterClose(HFILTER hFilter)
{
    return close_list(hFilter, FILTER_MAGIC);
}

HRESULT WINAPI FilterGetInformation(HFILTER hFilter, FILTER_INFORMATION_CLASS dwInformationClass,
                                    LPVOID lpBuffer, DWORD dwBufferSize, LPDWORD lpBytesReturned)
{
    struct filter_list *list;
    HRESULT hr;
    if (!lpBytesReturned) return E_INVALIDARG;
    *lpBytesReturned = 0;
    if (!(list = lock_list(hFilter, FILTER_MAGIC))) return E_HANDLE;
    hr = filter_information(list->names[0], dwInformationClass, lpBuffer, dwBufferSize,
                            lpBytesReturned);
    ReleaseSRWLockExclusive(&live_lock);
    return hr;
}

/* FilterLoad: a loaded filter is already running (ERROR_SERVICE_ALREADY_RUNNING); any other
 * has no driver to load (0x80070002). */
HRESULT WINAPI FilterLoad(LPCWSTR lpFilterName)
{
    HRESULT hr;
    if (!lpFilterName) return E_INVALIDARG;
    hr = is_loaded(lpFilterName);
    if (FAILED(hr)) return hr;
    return hr == S_OK ? HRESULT_FROM_WIN32(ERROR_SERVICE_ALREADY_RUNNING)
                      : HRESULT_FROM_WIN32(ERROR_FILE_NOT_FOUND);
}

/* FilterUnload: FltUnregisterFilter of a loaded filter (the daemon's `unload`), else
 * ERROR_FLT_FILTER_NOT_FOUND. */
HRESULT WINAPI FilterUnload(LPCWSTR lpFilterName)
{
    char name[MAX_NAME_BYTES + 1];
    unsigned long long len = 0;
    unsigned int status = 0;
    unsigned char *body;
    enum control_outcome outcome;
    HRESULT hr;
    if (!lpFilterName) return E_INVALIDARG;
    if ((hr = is_loaded(lpFilterName)) != S_OK) return FAILED(hr) ? hr : ERROR_FLT_FILTER_NOT_FOUND;
    if (!WideCharToMultiByte(CP_UTF8, 0, lpFilterName, -1, name, sizeof name, NULL, NULL))
        return E_INVALIDARG;
    outcome = control("unload", name, &body, &len);
    if (outcome != CONTROL_ANSWERED)
        return outcome == CONTROL_NO_DAEMON ? ERROR_FLT_FILTER_NOT_FOUND
               : outcome == CONTROL_DENIED  ? E_ACCESSDENIED
                                            : E_FAIL;
    struct wire_in in = {body, body + len, 0};
    hr = !control_status(&in, &status)                      ? E_FAIL
         : status == 0                                      ? S_OK
         : status == (unsigned)STATUS_OBJECT_NAME_NOT_FOUND ? ERROR_FLT_FILTER_NOT_FOUND
         : status == (unsigned)STATUS_ACCESS_DENIED         ? E_ACCESSDENIED
                                                            : flt_hresult((NTSTATUS)status);
    HeapFree(GetProcessHeap(), 0, body);
    return hr;
}

/* With no volume, a loaded filter has no instance to find, create or detach, and cannot be
 * attached: ERROR_FLT_VOLUME_NOT_FOUND; a filter that is not loaded: ERROR_FLT_FILTER_NOT_FOUND. */
static HRESULT filter_then(LPCWSTR filter, HRESULT if_loaded)
{
    HRESULT hr;
    if (!filter) return E_INVALIDARG;
    hr = is_loaded(filter);
    if (FAILED(hr)) return hr;
    return hr == S_OK ? if_loaded : ERROR_FLT_FILTER_NOT_FOUND;
}

HRESULT WINAPI FilterAttach(LPCWSTR lpFilterName, LPCWSTR lpVolumeName, LPCWSTR lpInstanceName,
                            DWORD dwCreatedInstanceNameLength, LPWSTR lpCreatedInstanceName)
{
    (void)lpVolumeName;
    (void)lpInstanceName;
    (void)dwCreatedInstanceNameLength;
    (void)lpCreatedInstanceName;
    return filter_then(lpFilterName, ERROR_FLT_VOLUME_NOT_FOUND);
}

HRESULT WINAPI FilterAttachAtAltitude(LPCWSTR lpFilterName, LPCWSTR lpVolumeName,
                                      LPCWSTR lpAltitude, LPCWSTR lpInstanceName,
                                      DWORD dwCreatedInstanceNameLength,
                                      LPWSTR lpCreatedInstanceName)
{
    (void)lpVolumeName;
    (void)lpAltitude;
    (void)lpInstanceName;
    (void)dwCreatedInstanceNameLength;
    (void)lpCreatedInstanceName;
    return filter_then(lpFilterName, ERROR_FLT_VOLUME_NOT_FOUND);
}

HRESULT WINAPI FilterDetach(LPCWSTR lpFilterName, LPCWSTR lpVolumeName, LPCWSTR lpInstanceName)
{
    (void)lpVolumeName;
    (void)lpInstanceName;
    return filter_then(lpFilterName, ERROR_FLT_VOLUME_NOT_FOUND);
}

HRESULT WINAPI FilterInstanceCreate(LPCWSTR lpFilterName, LPCWSTR lpVolumeName,
                                    LPCWSTR lpInstanceName, HFILTER_INSTANCE *hInstance)
{
    (void)lpVolumeName;
    (void)lpInstanceName;
    if (!hInstance) return E_INVALIDARG;
    *hInstance = INVALID_HANDLE_VALUE;
    return filter_then(lpFilterName, ERROR_FLT_VOLUME_NOT_FOUND);
}

/* FilterInstanceFindFirst: a loaded filter has no instance (ERROR_NO_MORE_ITEMS). */
HRESULT WINAPI FilterInstanceFindFirst(LPCWSTR lpFilterName,
                                       INSTANCE_INFORMATION_CLASS dwInformationClass,
                                       LPVOID lpBuffer, DWORD dwBufferSize, LPDWORD lpBytesReturned,
                                       LPHANDLE lpFilterInstanceFind)
{
    (void)dwInformationClass;
    (void)lpBuffer;
    (void)dwBufferSize;
    if (!lpBytesReturned || !lpFilterInstanceFind) return E_INVALIDARG;
    *lpBytesReturned = 0;
    *lpFilterInstanceFind = INVALID_HANDLE_VALUE;
    return filter_then(lpFilterName, NO_MORE_ITEMS);
}

/* The volume enumeration is empty, consistently: there is no volume, so FilterVolumeFindFirst
 * says no more items, and every volume name is unknown. */
HRESULT WINAPI FilterVolumeFindFirst(FILTER_VOLUME_INFORMATION_CLASS dwInformationClass,
                                     LPVOID lpBuffer, DWORD dwBufferSize, LPDWORD lpBytesReturned,
                                     PHANDLE lpVolumeFind)
{
    (void)dwInformationClass;
    (void)lpBuffer;
    (void)dwBufferSize;
    if (!lpBytesReturned || !lpVolumeFind) return E_INVALIDARG;
    *lpBytesReturned = 0;
    *lpVolumeFind = INVALID_HANDLE_VALUE;
    return NO_MORE_ITEMS;
}

HRESULT WINAPI FilterVolumeInstanceFindFirst(LPCWSTR lpVolumeName,
                                             INSTANCE_INFORMATION_CLASS dwInformationClass,
                                             LPVOID lpBuffer, DWORD dwBufferSize,
                                             LPDWORD lpBytesReturned, LPHANDLE lpVolumeInstanceFind)
{
    (void)dwInformationClass;
    (void)lpBuffer;
    (void)dwBufferSize;
    if (!lpVolumeName || !lpBytesReturned || !lpVolumeInstanceFind) return E_INVALIDARG;
    *lpBytesReturned = 0;
    *lpVolumeInstanceFind = INVALID_HANDLE_VALUE;
    return ERROR_FLT_VOLUME_NOT_FOUND;
}

/* FilterGetDosName: no volume of that name (ERROR_FLT_VOLUME_NOT_FOUND). */
HRESULT WINAPI FilterGetDosName(LPCWSTR lpVolumeName, LPWSTR lpDosName, DWORD dwDosNameBufferSize)
{
    if (!lpVolumeName || !lpDosName || !dwDosNameBufferSize) return E_INVALIDARG;
    lpDosName[0] = 0;
    return ERROR_FLT_VOLUME_NOT_FOUND;
}

/* Handles that no call above ever returns: E_HANDLE. */

HRESULT WINAPI FilterVolumeFindNext(HANDLE h, FILTER_VOLUME_INFORMATION_CLASS c, LPVOID b, DWORD s,
                                    LPDWORD r)
{
    (void)h;
    (void)c;
    (void)b;
    (void)s;
    if (r) *r = 0;
    return E_HANDLE;
}

HRESULT WINAPI FilterVolumeFindClose(HANDLE h)
{
    (void)h;
    return E_HANDLE;
}

HRESULT WINAPI FilterVolumeClose(HANDLE h)
{
    (void)h;
    return E_HANDLE;
}

HRESULT WINAPI FilterInstanceFindNext(HANDLE h, INSTANCE_INFORMATION_CLASS c, LPVOID b, DWORD s,
                                      LPDWORD r)
{
    (void)h;
    (void)c;
    (void)b;
    (void)s;
    if (r) *r = 0;
    return E_HANDLE;
}

HRESULT WINAPI FilterInstanceFindClose(HANDLE h)
{
    (void)h;
    return E_HANDLE;
}

HRESULT WINAPI FilterVolumeInstanceFindNext(HANDLE h, INSTANCE_INFORMATION_CLASS c, LPVOID b,
                                            DWORD s, LPDWORD r)
{
    (void)h;
    (void)c;
    (void)b;
    (void)s;
    if (r) *r = 0;
    return E_HANDLE;
}

HRESULT WINAPI FilterVolumeInstanceFindClose(HANDLE h)
{
    (void)h;
    return E_HANDLE;
}

HRESULT WINAPI FilterInstanceClose(HFILTER_INSTANCE h)
{
    (void)h;
    return E_HANDLE;
}

HRESULT WINAPI FilterInstanceGetInformation(HFILTER_INSTANCE h, INSTANCE_INFORMATION_CLASS c,
                                            LPVOID b, DWORD s, LPDWORD r)
{
    (void)h;
    (void)c;
    (void)b;
    (void)s;
    if (r) *r = 0;
    return E_HANDLE;
}
