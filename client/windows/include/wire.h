/*
 * The subset of fltemu's wire protocol (docs/protocol.md, version 1) that the Windows side
 * needs: encode Connect / Attach / SendRequest / GetRequest / ReplyRequest / GetCancel / Control,
 * decode ConnectResult / SendResult / GetResult / ReplyResult / Goodbye / Disconnected / Section,
 * and walk a ControlResult.  Sans-IO: bytes in, structs out; no allocation, no system calls. Shared
 * by fltemu.sys (port connections) and fltlib.dll (control connections).
 *
 * Frames are a u32 little-endian body length, then one msgpack array whose element 0 is the
 * tag (protocol §2-§4).  The decoder is strict as the protocol asks: wrong types, values out
 * of range and truncated values are errors; trailing elements are ignored (protocol §11).
 */
#ifndef FLTEMU_WIRE_H
#define FLTEMU_WIRE_H

#define WIRE_PROTOCOL_VERSION 1u
#define WIRE_FRAME_OVERHEAD 262144u /* protocol §2 FRAME_OVERHEAD_BYTES */
#define WIRE_DEFAULT_MAX_MESSAGE 16777216u

enum wire_tag {
    WIRE_CONNECT = 1,
    WIRE_SEND_REQUEST = 2,
    WIRE_GET_REQUEST = 3,
    WIRE_REPLY_REQUEST = 4,
    WIRE_GET_CANCEL = 5,
    WIRE_CONTROL = 6,
    WIRE_ATTACH = 8,
    WIRE_CONNECT_RESULT = 16,
    WIRE_SEND_RESULT = 17,
    WIRE_GET_RESULT = 18,
    WIRE_REPLY_RESULT = 19,
    WIRE_GOODBYE = 20,
    WIRE_CONTROL_RESULT = 21,
    WIRE_DISCONNECTED = 22,
    WIRE_SECTION = 23,
};

/* Connect.options bits above Windows' dwOptions: what this client handles (protocol §5). */
#define WIRE_OPTION_DISCONNECT_NOTICE 0x80000000u
#define WIRE_OPTION_SECTIONS 0x40000000u
#define WIRE_OPTION_ATTACH 0x20000000u
/* ConnectResult.attach_token's size (protocol §5b). */
#define WIRE_ATTACH_TOKEN_BYTES 16u

/* ---- encoding: a cursor over a caller-sized buffer ---- */

struct wire_out {
    unsigned char *p;
};

static inline void wire_put_be(struct wire_out *o, unsigned long long v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--) *o->p++ = (unsigned char)(v >> (8 * i));
}

static inline void wire_put_array(struct wire_out *o, unsigned n)
{
    *o->p++ = (unsigned char)(0x90 | n); /* fixarray: every message has < 16 elements */
}

static inline void wire_put_uint(struct wire_out *o, unsigned long long v)
{
    if (v < 0x80) {
        *o->p++ = (unsigned char)v;
    } else if (v <= 0xFF) {
        *o->p++ = 0xcc;
        wire_put_be(o, v, 1);
    } else if (v <= 0xFFFF) {
        *o->p++ = 0xcd;
        wire_put_be(o, v, 2);
    } else if (v <= 0xFFFFFFFFull) {
        *o->p++ = 0xce;
        wire_put_be(o, v, 4);
    } else {
        *o->p++ = 0xcf;
        wire_put_be(o, v, 8);
    }
}

static inline void wire_copy(unsigned char *dst, const void *src, unsigned long long n)
{
    const unsigned char *s = src;
    while (n--) *dst++ = *s++;
}

static inline void wire_put_raw(struct wire_out *o, unsigned char small, unsigned char mid,
                                unsigned char big, const void *data, unsigned long long len)
{
    if (small && len < 32) {
        *o->p++ = (unsigned char)(small | len);
    } else if (len <= 0xFF) {
        *o->p++ = mid;
        wire_put_be(o, len, 1);
    } else if (len <= 0xFFFF) {
        *o->p++ = (unsigned char)(mid + 1);
        wire_put_be(o, len, 2);
    } else {
        *o->p++ = big;
        wire_put_be(o, len, 4);
    }
    wire_copy(o->p, data, len);
    o->p += len;
}

static inline void wire_put_bin(struct wire_out *o, const void *data, unsigned long long len)
{
    wire_put_raw(o, 0, 0xc4, 0xc6, data, len);
}

static inline void wire_put_str(struct wire_out *o, const void *data, unsigned long long len)
{
    wire_put_raw(o, 0xa0, 0xd9, 0xdb, data, len);
}

/* Upper bound of the encoded size of any request carrying `payload` bytes of bin/str data. */
#define WIRE_REQUEST_MAX(payload) (4u + 64u + (payload))

/* Writes the length prefix for a frame that started at `start` and ends at o->p. */
static inline unsigned long long wire_finish(struct wire_out *o, unsigned char *start)
{
    unsigned long long body = (unsigned long long)(o->p - start) - 4;
    start[0] = (unsigned char)body;
    start[1] = (unsigned char)(body >> 8);
    start[2] = (unsigned char)(body >> 16);
    start[3] = (unsigned char)(body >> 24);
    return body + 4;
}

/* ---- decoding ---- */

struct wire_in {
    const unsigned char *p, *end;
    int bad;
};

static inline unsigned long long wire_get_be(struct wire_in *in, int bytes)
{
    unsigned long long v = 0;
    if (in->end - in->p < bytes) {
        in->bad = 1;
        return 0;
    }
    for (int i = 0; i < bytes; i++) v = (v << 8) | *in->p++;
    return v;
}

static inline unsigned wire_get_array(struct wire_in *in)
{
    if (in->p >= in->end) {
        in->bad = 1;
        return 0;
    }
    unsigned char b = *in->p++;
    if ((b & 0xf0) == 0x90) return b & 0x0f;
    if (b == 0xdc) return (unsigned)wire_get_be(in, 2);
    if (b == 0xdd) return (unsigned)wire_get_be(in, 4);
    in->bad = 1;
    return 0;
}

/* Any msgpack integer whose value is in 0..max. */
static inline unsigned long long wire_get_uint(struct wire_in *in, unsigned long long max)
{
    if (in->p >= in->end) {
        in->bad = 1;
        return 0;
    }
    unsigned char b = *in->p++;
    unsigned long long v;
    long long s;
    if (b < 0x80)
        v = b;
    else if (b == 0xcc)
        v = wire_get_be(in, 1);
    else if (b == 0xcd)
        v = wire_get_be(in, 2);
    else if (b == 0xce)
        v = wire_get_be(in, 4);
    else if (b == 0xcf)
        v = wire_get_be(in, 8);
    else if (b >= 0xd0 && b <= 0xd3) {
        int n = 1 << (b - 0xd0);
        unsigned long long raw = wire_get_be(in, n);
        s = (long long)(raw << (64 - 8 * n)) >> (64 - 8 * n);
        if (s < 0) {
            in->bad = 1;
            return 0;
        }
        v = (unsigned long long)s;
    } else {
        in->bad = 1;
        return 0;
    }
    if (v > max) {
        in->bad = 1;
        return 0;
    }
    return v;
}

/* A bin (is_str = 0) or str (is_str = 1) value: returns a pointer into the frame. */
static inline const unsigned char *wire_get_bytes(struct wire_in *in, int is_str,
                                                  unsigned long long *len)
{
    *len = 0;
    if (in->p >= in->end) {
        in->bad = 1;
        return 0;
    }
    unsigned char b = *in->p++;
    unsigned long long n;
    if (is_str && (b & 0xe0) == 0xa0)
        n = b & 0x1f;
    else if (b == (is_str ? 0xd9 : 0xc4))
        n = wire_get_be(in, 1);
    else if (b == (is_str ? 0xda : 0xc5))
        n = wire_get_be(in, 2);
    else if (b == (is_str ? 0xdb : 0xc6))
        n = wire_get_be(in, 4);
    else {
        in->bad = 1;
        return 0;
    }
    if (in->bad || (unsigned long long)(in->end - in->p) < n) {
        in->bad = 1;
        return 0;
    }
    const unsigned char *data = in->p;
    in->p += n;
    *len = n;
    return data;
}

/* Skips one value of any type.  Nesting is bounded so a hostile frame cannot recurse deep. */
static inline void wire_skip(struct wire_in *in, int depth)
{
    if (in->bad || in->p >= in->end || depth > 32) {
        in->bad = 1;
        return;
    }
    unsigned char b = *in->p++;
    unsigned long long n = 0, items = 0;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) return;
    if ((b & 0xe0) == 0xa0)
        n = b & 0x1f;
    else if ((b & 0xf0) == 0x90)
        items = b & 0x0f;
    else if ((b & 0xf0) == 0x80)
        items = 2ull * (b & 0x0f);
    else
        switch (b) {
        case 0xc4:
        case 0xd9:
            n = wire_get_be(in, 1);
            break;
        case 0xc5:
        case 0xda:
            n = wire_get_be(in, 2);
            break;
        case 0xc6:
        case 0xdb:
            n = wire_get_be(in, 4);
            break;
        case 0xcc:
        case 0xd0:
            n = 1;
            break;
        case 0xcd:
        case 0xd1:
            n = 2;
            break;
        case 0xce:
        case 0xd2:
        case 0xca:
            n = 4;
            break;
        case 0xcf:
        case 0xd3:
        case 0xcb:
            n = 8;
            break;
        case 0xd4:
            n = 2;
            break;
        case 0xd5:
            n = 3;
            break;
        case 0xd6:
            n = 5;
            break;
        case 0xd7:
            n = 9;
            break;
        case 0xd8:
            n = 17;
            break;
        case 0xc7:
            n = wire_get_be(in, 1) + 1;
            break;
        case 0xc8:
            n = wire_get_be(in, 2) + 1;
            break;
        case 0xc9:
            n = wire_get_be(in, 4) + 1;
            break;
        case 0xdc:
            items = wire_get_be(in, 2);
            break;
        case 0xdd:
            items = wire_get_be(in, 4);
            break;
        case 0xde:
            items = 2 * wire_get_be(in, 2);
            break;
        case 0xdf:
            items = 2 * wire_get_be(in, 4);
            break;
        default:
            in->bad = 1;
            return;
        }
    if (in->bad || (unsigned long long)(in->end - in->p) < n) {
        in->bad = 1;
        return;
    }
    in->p += n;
    while (items-- && !in->bad) wire_skip(in, depth + 1);
}

/* The header of a map (fixmap, map16, map32): its number of key/value pairs. */
static inline unsigned wire_get_map(struct wire_in *in)
{
    if (in->p >= in->end) {
        in->bad = 1;
        return 0;
    }
    unsigned char b = *in->p++;
    if ((b & 0xf0) == 0x80) return b & 0x0f;
    if (b == 0xde) return (unsigned)wire_get_be(in, 2);
    if (b == 0xdf) return (unsigned)wire_get_be(in, 4);
    in->bad = 1;
    return 0;
}

/* A decoded daemon->user message.  Fields not carried by `tag` are zero. */
struct wire_result {
    unsigned tag;
    unsigned long long rid;
    unsigned int status;
    unsigned long long message_id;    /* GetResult */
    unsigned int reply_length;        /* GetResult */
    unsigned long long required_size; /* GetResult */
    unsigned int offset;              /* Section */
    unsigned long long max_message;   /* ConnectResult */
    const unsigned char *token;       /* ConnectResult.attach_token (token_len bytes) */
    unsigned long long token_len;
    const unsigned char *data; /* SendResult / GetResult / Section, into the frame */
    unsigned long long data_len;
};

/* Decodes one frame body.  Returns 0 on success, -1 for a malformed frame. */
static inline int wire_decode(const unsigned char *body, unsigned long long len,
                              struct wire_result *r)
{
    struct wire_in in = {body, body + len, 0};
    unsigned n = wire_get_array(&in);
    const unsigned long long U32 = 0xFFFFFFFFull, U64 = ~0ull;
    r->tag = 0;
    r->rid = 0;
    r->status = 0;
    r->message_id = 0;
    r->reply_length = 0;
    r->required_size = 0;
    r->max_message = 0;
    r->data = 0;
    r->data_len = 0;
    r->offset = 0;
    r->token = 0;
    r->token_len = 0;
    if (in.bad || n < 1) return -1;
    r->tag = (unsigned)wire_get_uint(&in, 0xFF);
    switch (r->tag) {
    case WIRE_CONNECT_RESULT: /* version, status, max_message_bytes = 0, attach_token = b"" */
        if (n < 3) return -1;
        (void)wire_get_uint(&in, U32);
        r->status = (unsigned)wire_get_uint(&in, U32);
        if (n >= 4) r->max_message = wire_get_uint(&in, U64);
        if (n >= 5) r->token = wire_get_bytes(&in, 0, &r->token_len);
        break;
    case WIRE_SEND_RESULT: /* rid, status, data = b"" */
        if (n < 3) return -1;
        r->rid = wire_get_uint(&in, U64);
        r->status = (unsigned)wire_get_uint(&in, U32);
        if (n >= 4) r->data = wire_get_bytes(&in, 0, &r->data_len);
        break;
    case WIRE_GET_RESULT: /* rid, status, message_id, reply_length, data, required_size */
        if (n < 3) return -1;
        r->rid = wire_get_uint(&in, U64);
        r->status = (unsigned)wire_get_uint(&in, U32);
        if (n >= 4) r->message_id = wire_get_uint(&in, U64);
        if (n >= 5) r->reply_length = (unsigned)wire_get_uint(&in, U32);
        if (n >= 6) r->data = wire_get_bytes(&in, 0, &r->data_len);
        if (n >= 7) r->required_size = wire_get_uint(&in, U64);
        break;
    case WIRE_REPLY_RESULT: /* rid, status */
        if (n < 3) return -1;
        r->rid = wire_get_uint(&in, U64);
        r->status = (unsigned)wire_get_uint(&in, U32);
        break;
    case WIRE_DISCONNECTED: /* status */
        if (n < 2) return -1;
        r->status = (unsigned)wire_get_uint(&in, U32);
        break;
    case WIRE_SECTION: /* rid, offset, data */
        if (n < 4) return -1;
        r->rid = wire_get_uint(&in, U64);
        r->offset = (unsigned)wire_get_uint(&in, U32);
        r->data = wire_get_bytes(&in, 0, &r->data_len);
        break;
    case WIRE_GOODBYE: /* status, reason = "" */
        if (n < 2) return -1;
        r->status = (unsigned)wire_get_uint(&in, U32);
        break;
    default:
        return -1;
    }
    return in.bad ? -1 : 0;
}

#endif
