/*
 * The Windows side's wire.h against the Python wire (tests/wire/test_c_contract.py), built
 * natively with cc: no Wine needed.
 *
 *   wire_check constants      prints NAME VALUE for every constant wire.h defines
 *   wire_check decode HEX...  decodes each frame body (hex) and prints its fields, or "bad"
 *   wire_check encode         prints the frames wire.h encodes for a fixed set of requests
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../../client/windows/include/wire.h"

static void hex(const unsigned char *p, unsigned long long n)
{
    for (unsigned long long i = 0; i < n; i++) printf("%02x", p[i]);
}

static int from_hex(const char *text, unsigned char *out, size_t size)
{
    size_t n = strlen(text) / 2;
    if (n > size) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(text + 2 * i, "%2x", &v) != 1) return -1;
        out[i] = (unsigned char)v;
    }
    return (int)n;
}

static void constants(void)
{
    printf("PROTOCOL_VERSION %u\n", WIRE_PROTOCOL_VERSION);
    printf("FRAME_OVERHEAD_BYTES %u\n", WIRE_FRAME_OVERHEAD);
    printf("DEFAULT_MAX_MESSAGE_BYTES %u\n", WIRE_DEFAULT_MAX_MESSAGE);
    printf("OPTION_DISCONNECT_NOTICE %u\n", WIRE_OPTION_DISCONNECT_NOTICE);
    printf("OPTION_SECTIONS %u\n", WIRE_OPTION_SECTIONS);
    printf("OPTION_ATTACH %u\n", WIRE_OPTION_ATTACH);
    printf("ATTACH_TOKEN_BYTES %u\n", WIRE_ATTACH_TOKEN_BYTES);
    printf("Connect %d\nSendRequest %d\nGetRequest %d\nReplyRequest %d\nGetCancel %d\n",
           WIRE_CONNECT, WIRE_SEND_REQUEST, WIRE_GET_REQUEST, WIRE_REPLY_REQUEST, WIRE_GET_CANCEL);
    printf("Control %d\nAttach %d\nConnectResult %d\nSendResult %d\nGetResult %d\n", WIRE_CONTROL,
           WIRE_ATTACH, WIRE_CONNECT_RESULT, WIRE_SEND_RESULT, WIRE_GET_RESULT);
    printf("ReplyResult %d\nGoodbye %d\nControlResult %d\nDisconnected %d\nSection %d\n",
           WIRE_REPLY_RESULT, WIRE_GOODBYE, WIRE_CONTROL_RESULT, WIRE_DISCONNECTED, WIRE_SECTION);
}

static void decode(const char *text)
{
    static unsigned char body[1 << 16];
    int n = from_hex(text, body, sizeof body);
    struct wire_result r;
    if (n < 0 || wire_decode(body, (unsigned long long)n, &r) != 0) {
        printf("bad\n");
        return;
    }
    printf("tag=%u rid=%llu status=%u message_id=%llu reply_length=%u required_size=%llu "
           "offset=%u max_message=%llu data=",
           r.tag, r.rid, r.status, r.message_id, r.reply_length, r.required_size, r.offset,
           r.max_message);
    hex(r.data, r.data ? r.data_len : 0);
    printf(" token=");
    hex(r.token, r.token ? r.token_len : 0);
    printf("\n");
}

/* One frame per line: what the driver and the DLL send for each request. */
static void encode(void)
{
    unsigned char frame[256];
    static const unsigned char token[WIRE_ATTACH_TOKEN_BYTES] = {1, 2, 3};
    struct wire_out o = {frame + 4};
    wire_put_array(&o, 5);
    wire_put_uint(&o, WIRE_CONNECT);
    wire_put_uint(&o, WIRE_PROTOCOL_VERSION);
    wire_put_str(&o, "\\P", 2);
    wire_put_bin(&o, "ctx", 3);
    wire_put_uint(&o, WIRE_OPTION_DISCONNECT_NOTICE | WIRE_OPTION_SECTIONS | WIRE_OPTION_ATTACH);
    hex(frame, wire_finish(&o, frame));
    printf("\n");
    o.p = frame + 4;
    wire_put_array(&o, 4);
    wire_put_uint(&o, WIRE_ATTACH);
    wire_put_uint(&o, WIRE_PROTOCOL_VERSION);
    wire_put_bin(&o, token, sizeof token);
    wire_put_uint(&o, WIRE_OPTION_DISCONNECT_NOTICE | WIRE_OPTION_SECTIONS);
    hex(frame, wire_finish(&o, frame));
    printf("\n");
    o.p = frame + 4;
    wire_put_array(&o, 5);
    wire_put_uint(&o, WIRE_SEND_REQUEST);
    wire_put_uint(&o, 300);
    wire_put_bin(&o, "hello", 5);
    wire_put_uint(&o, 70000);
    wire_put_uint(&o, 0x3c);
    hex(frame, wire_finish(&o, frame));
    printf("\n");
    o.p = frame + 4;
    wire_put_array(&o, 3);
    wire_put_uint(&o, WIRE_GET_REQUEST);
    wire_put_uint(&o, 1ull << 40);
    wire_put_uint(&o, 1048);
    hex(frame, wire_finish(&o, frame));
    printf("\n");
    o.p = frame + 4;
    wire_put_array(&o, 5);
    wire_put_uint(&o, WIRE_REPLY_REQUEST);
    wire_put_uint(&o, 7);
    wire_put_uint(&o, 9);
    wire_put_uint(&o, 0xC0000022u);
    wire_put_bin(&o, "ok", 2);
    hex(frame, wire_finish(&o, frame));
    printf("\n");
    o.p = frame + 4;
    wire_put_array(&o, 2);
    wire_put_uint(&o, WIRE_GET_CANCEL);
    wire_put_uint(&o, 5);
    hex(frame, wire_finish(&o, frame));
    printf("\n");
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "constants"))
        constants();
    else if (argc >= 2 && !strcmp(argv[1], "decode"))
        for (int i = 2; i < argc; i++) decode(argv[i]);
    else if (argc == 2 && !strcmp(argv[1], "encode"))
        encode();
    else
        return 2;
    return 0;
}
