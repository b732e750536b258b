/* Golden frames (firmware_bridge/golden_frames.json, the same file the Python tests check):
 * the C codec decodes each to the listed field values and encodes the values to the exact
 * bytes; each invalid packet is rejected with the listed error class and, where listed,
 * answered by the core with the listed NACK code. Plus CRC and COBS reference vectors. */
#include <stddef.h>

#include "golden_frames.h"
#include "test_util.h"

typedef struct {
    uint8_t type;
    const char *name;
    size_t offset;
    char kind; /* f float, i int32, I uint32, H uint16, B uint8 */
    int count;
} field_map_t;

#define FM(t, n, member, kind, count) {t, n, offsetof(fw_msg_t, member), kind, count}
static const field_map_t FIELD_MAP[] = {
    FM(FW_MSG_SET_VEL, "left", u.wheels.left, 'f', 1),
    FM(FW_MSG_SET_VEL, "right", u.wheels.right, 'f', 1),
    FM(FW_MSG_SET_PWM, "left", u.wheels.left, 'f', 1),
    FM(FW_MSG_SET_PWM, "right", u.wheels.right, 'f', 1),
    FM(FW_MSG_SET_PID, "kp", u.pid.kp, 'f', 1),
    FM(FW_MSG_SET_PID, "ki", u.pid.ki, 'f', 1),
    FM(FW_MSG_SET_PID, "kd", u.pid.kd, 'f', 1),
    FM(FW_MSG_SET_PID, "i_limit", u.pid.i_limit, 'f', 1),
    FM(FW_MSG_CONFIG, "telemetry_period_ms", u.config.telemetry_period_ms, 'H', 1),
    FM(FW_MSG_CONFIG, "watchdog_ms", u.config.watchdog_ms, 'H', 1),
    FM(FW_MSG_CONFIG, "max_wheel_speed", u.config.max_wheel_speed, 'f', 1),
    FM(FW_MSG_CONFIG, "ticks_per_rev", u.config.ticks_per_rev, 'H', 1),
    FM(FW_MSG_PING, "token", u.ping.token, 'I', 1),
    FM(FW_MSG_TELEMETRY, "enc_left", u.telemetry.enc_left, 'i', 1),
    FM(FW_MSG_TELEMETRY, "enc_right", u.telemetry.enc_right, 'i', 1),
    FM(FW_MSG_TELEMETRY, "speed_left", u.telemetry.speed_left, 'f', 1),
    FM(FW_MSG_TELEMETRY, "speed_right", u.telemetry.speed_right, 'f', 1),
    FM(FW_MSG_TELEMETRY, "ranges_mm", u.telemetry.ranges_mm, 'H', 8),
    FM(FW_MSG_TELEMETRY, "mcu_time_us", u.telemetry.mcu_time_us, 'I', 1),
    FM(FW_MSG_TELEMETRY, "status", u.telemetry.status, 'H', 1),
    FM(FW_MSG_TELEMETRY, "last_cmd_seq", u.telemetry.last_cmd_seq, 'H', 1),
    FM(FW_MSG_ACK, "acked_seq", u.ack.acked_seq, 'H', 1),
    FM(FW_MSG_ACK, "acked_type", u.ack.acked_type, 'B', 1),
    FM(FW_MSG_NACK, "acked_seq", u.ack.acked_seq, 'H', 1),
    FM(FW_MSG_NACK, "acked_type", u.ack.acked_type, 'B', 1),
    FM(FW_MSG_NACK, "error", u.ack.error, 'B', 1),
    FM(FW_MSG_HELLO, "protocol_version", u.hello.protocol_version, 'B', 1),
    FM(FW_MSG_HELLO, "fw_version", u.hello.fw_version, 'H', 1),
    FM(FW_MSG_HELLO, "boot_count", u.hello.boot_count, 'I', 1),
    FM(FW_MSG_HELLO, "reset_reason", u.hello.reset_reason, 'B', 1),
};
#define NUM_FIELD_MAP ((int)(sizeof FIELD_MAP / sizeof FIELD_MAP[0]))

static const field_map_t *find_field(uint8_t type, const char *name) {
    int i;
    for (i = 0; i < NUM_FIELD_MAP; ++i) {
        if (FIELD_MAP[i].type == type && strcmp(FIELD_MAP[i].name, name) == 0) return &FIELD_MAP[i];
    }
    return NULL;
}

static int kind_size(char kind) { return kind == 'B' ? 1 : kind == 'H' ? 2 : 4; }

static double get_field(const fw_msg_t *m, const field_map_t *f, int index) {
    const char *p = (const char *)m + f->offset + (index > 0 ? index : 0) * kind_size(f->kind);
    float fv; int32_t iv; uint32_t uv; uint16_t hv; uint8_t bv;
    switch (f->kind) {
    case 'f': memcpy(&fv, p, 4); return fv;
    case 'i': memcpy(&iv, p, 4); return iv;
    case 'I': memcpy(&uv, p, 4); return uv;
    case 'H': memcpy(&hv, p, 2); return hv;
    default: memcpy(&bv, p, 1); return bv;
    }
}

static void set_field(fw_msg_t *m, const field_map_t *f, int index, double v) {
    char *p = (char *)m + f->offset + (index > 0 ? index : 0) * kind_size(f->kind);
    float fv = (float)v; int32_t iv = (int32_t)v; uint32_t uv = (uint32_t)v;
    uint16_t hv = (uint16_t)v; uint8_t bv = (uint8_t)v;
    switch (f->kind) {
    case 'f': memcpy(p, &fv, 4); break;
    case 'i': memcpy(p, &iv, 4); break;
    case 'I': memcpy(p, &uv, 4); break;
    case 'H': memcpy(p, &hv, 2); break;
    default: memcpy(p, &bv, 1); break;
    }
}

static void test_reference_vectors(void) {
    static const uint8_t check[] = "123456789";
    uint8_t out[300], back[300];
    uint8_t run[254];
    long n;
    size_t i, e;
    CHECK(fw_crc16(check, 9) == 0x29B1, "crc16(123456789) = 0x%04X", fw_crc16(check, 9));
    {
        static const uint8_t in[] = {0x11, 0x22, 0x00, 0x33};
        static const uint8_t want[] = {0x03, 0x11, 0x22, 0x02, 0x33};
        e = fw_cobs_encode(in, 4, out);
        CHECK(e == 5 && memcmp(out, want, 5) == 0, "cobs 11 22 00 33");
        n = fw_cobs_decode(out, e, back, sizeof back);
        CHECK(n == 4 && memcmp(back, in, 4) == 0, "cobs decode 11 22 00 33");
    }
    {
        static const uint8_t in[] = {0x00, 0x00};
        e = fw_cobs_encode(in, 2, out);
        CHECK(e == 3 && out[0] == 1 && out[1] == 1 && out[2] == 1, "cobs 00 00");
    }
    e = fw_cobs_encode(NULL, 0, out);
    CHECK(e == 1 && out[0] == 1, "cobs of empty input is 01");
    for (i = 0; i < 254; ++i) run[i] = (uint8_t)(i + 1);
    e = fw_cobs_encode(run, 254, out);
    CHECK(e == 256 && out[0] == 0xFF && out[255] == 0x01, "cobs 254-byte run: len %zu", e);
    n = fw_cobs_decode(out, e, back, sizeof back);
    CHECK(n == 254 && memcmp(back, run, 254) == 0, "cobs 254-byte run decodes back");
}

static void test_valid_frames(void) {
    int g, k;
    for (g = 0; g < GOLDEN_NUM_FRAMES; ++g) {
        const golden_frame_t *gf = &GOLDEN_FRAMES[g];
        uint8_t wire[128], out[FW_MAX_WIRE];
        size_t n = hex_to_bytes(gf->wire_hex, wire, sizeof wire), i, m;
        fw_parser_t p;
        fw_frame_t frame;
        fw_msg_t msg, built;
        int frames = 0;
        fw_parser_init(&p);
        for (i = 0; i < n; ++i) {
            fw_parse_result_t r = fw_parser_push(&p, wire[i], &frame);
            CHECK(r == (i + 1 == n ? FW_PARSE_FRAME : FW_PARSE_NONE), "%s: byte %zu gave %d", gf->name, i, (int)r);
            frames += r == FW_PARSE_FRAME;
        }
        if (frames != 1) continue;
        CHECK(fw_frame_to_msg(&frame, &msg) == FW_ERR_NONE, "%s: frame_to_msg", gf->name);
        CHECK(msg.type == gf->type_id && msg.seq == gf->seq && msg.ack == gf->ack, "%s: header %d/%d/%d",
              gf->name, msg.type, msg.seq, msg.ack);
        built = mk((uint8_t)gf->type_id, (uint16_t)gf->seq);
        built.ack = (uint16_t)gf->ack;
        for (k = 0; k < gf->num_fields; ++k) {
            const golden_field_t *gfld = &gf->fields[k];
            const field_map_t *f = find_field((uint8_t)gf->type_id, gfld->name);
            CHECK(f != NULL, "%s: no C field for %s", gf->name, gfld->name);
            if (f == NULL) continue;
            CHECK(get_field(&msg, f, gfld->index) == gfld->value, "%s.%s[%d]: C decoded %.9g, golden %.9g",
                  gf->name, gfld->name, gfld->index, get_field(&msg, f, gfld->index), gfld->value);
            set_field(&built, f, gfld->index, gfld->value);
        }
        m = fw_msg_encode(&built, out, sizeof out);
        CHECK(m == n && memcmp(out, wire, n) == 0, "%s: C encoding differs from golden bytes", gf->name);
    }
    /* every C message type appears in the golden file */
    {
        static const uint8_t types[] = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x81, 0x82, 0x83, 0x84};
        size_t t;
        for (t = 0; t < sizeof types; ++t) {
            int found = 0;
            for (g = 0; g < GOLDEN_NUM_FRAMES; ++g) found |= GOLDEN_FRAMES[g].type_id == types[t];
            CHECK(found, "type 0x%02X has no golden frame", types[t]);
        }
    }
}

static void test_invalid_frames(void) {
    int g;
    for (g = 0; g < GOLDEN_NUM_INVALID; ++g) {
        const golden_invalid_t *gi = &GOLDEN_INVALID[g];
        uint8_t wire[256];
        size_t n = hex_to_bytes(gi->wire_hex, wire, sizeof wire), i;
        fw_parser_t p;
        fw_frame_t frame;
        fw_parse_result_t last = FW_PARSE_NONE;
        int accepted = 0, oversize = 0;
        fw_parser_init(&p);
        for (i = 0; i < n; ++i) {
            fw_parse_result_t r = fw_parser_push(&p, wire[i], &frame);
            if (r == FW_PARSE_FRAME) {
                fw_msg_t m;
                accepted += fw_frame_to_msg(&frame, &m) == FW_ERR_NONE;
            }
            if (r == FW_PARSE_OVERSIZE) oversize = 1;
            if (r != FW_PARSE_NONE) last = r;
        }
        CHECK(accepted == 0, "%s: accepted as a valid message", gi->name);
        if (strcmp(gi->error, "crc") == 0) {
            CHECK(last == FW_PARSE_CRC_ERROR && p.crc_errors == 1, "%s: expected CRC error, got %d", gi->name, (int)last);
        } else if (strcmp(gi->error, "oversize") == 0) {
            CHECK(oversize && p.oversize == 1, "%s: expected oversize", gi->name);
        } else {
            /* "frame": rejected at frame level, or CRC-valid but refused by message checks */
            CHECK(last == FW_PARSE_FRAME_ERROR || last == FW_PARSE_FRAME, "%s: expected frame error, got %d",
                  gi->name, (int)last);
        }
        /* the core answers with the listed NACK, or stays silent */
        {
            sim_t s;
            fw_hal_t h;
            fw_core_t *fw;
            int before, nack;
            sim_init(&s);
            h = sim_hal(&s);
            fw = fw_create(&h, 1, FW_RESET_POWER_ON);
            before = s.num_msgs;
            fw_rx(fw, wire, n);
            nack = last_msg(&s, FW_MSG_NACK, before);
            if (gi->nack_error) {
                CHECK(nack >= 0 && s.msgs[nack].u.ack.error == gi->nack_error, "%s: expected NACK %d", gi->name,
                      gi->nack_error);
            } else {
                CHECK(s.num_msgs == before, "%s: core replied to a corrupt packet", gi->name);
                CHECK(fw_status(fw) & FW_STATUS_RX_ERROR, "%s: RX_ERROR not set", gi->name);
            }
            fw_destroy(fw);
        }
    }
}

int main(void) {
    test_reference_vectors();
    test_valid_frames();
    test_invalid_frames();
    if (g_failures) {
        fprintf(stderr, "test_golden: %d check(s) failed\n", g_failures);
        return 1;
    }
    printf("test_golden: %d golden frames, %d invalid packets OK\n", GOLDEN_NUM_FRAMES, GOLDEN_NUM_INVALID);
    return 0;
}
