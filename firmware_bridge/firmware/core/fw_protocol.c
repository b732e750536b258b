/* Wire protocol v1: see fw_protocol.h and firmware_bridge/PROTOCOL.md. */
#include "fw_protocol.h"

#include <string.h>

static const fw_msg_info_t MESSAGES[] = {
    {FW_MSG_SET_VEL, 8, 1, 0, "SET_VEL"},
    {FW_MSG_SET_PWM, 8, 1, 1, "SET_PWM"},
    {FW_MSG_SET_PID, 16, 1, 1, "SET_PID"},
    {FW_MSG_RESET_ENC, 0, 1, 1, "RESET_ENC"},
    {FW_MSG_CONFIG, 10, 1, 1, "CONFIG"},
    {FW_MSG_ESTOP, 0, 1, 1, "ESTOP"},
    {FW_MSG_CLEAR_ESTOP, 0, 1, 1, "CLEAR_ESTOP"},
    {FW_MSG_PING, 4, 1, 1, "PING"},
    {FW_MSG_TELEMETRY, 40, 0, 0, "TELEMETRY"},
    {FW_MSG_ACK, 3, 0, 0, "ACK"},
    {FW_MSG_NACK, 4, 0, 0, "NACK"},
    {FW_MSG_HELLO, 8, 0, 0, "HELLO"},
};

const fw_msg_info_t *fw_msg_info(uint8_t type) {
    size_t i;
    for (i = 0; i < sizeof MESSAGES / sizeof MESSAGES[0]; ++i) {
        if (MESSAGES[i].type == type) return &MESSAGES[i];
    }
    return NULL;
}

static const uint16_t CRC_TABLE[256] = {
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50a5, 0x60c6, 0x70e7, 0x8108, 0x9129, 0xa14a,
    0xb16b, 0xc18c, 0xd1ad, 0xe1ce, 0xf1ef, 0x1231, 0x0210, 0x3273, 0x2252, 0x52b5, 0x4294,
    0x72f7, 0x62d6, 0x9339, 0x8318, 0xb37b, 0xa35a, 0xd3bd, 0xc39c, 0xf3ff, 0xe3de, 0x2462,
    0x3443, 0x0420, 0x1401, 0x64e6, 0x74c7, 0x44a4, 0x5485, 0xa56a, 0xb54b, 0x8528, 0x9509,
    0xe5ee, 0xf5cf, 0xc5ac, 0xd58d, 0x3653, 0x2672, 0x1611, 0x0630, 0x76d7, 0x66f6, 0x5695,
    0x46b4, 0xb75b, 0xa77a, 0x9719, 0x8738, 0xf7df, 0xe7fe, 0xd79d, 0xc7bc, 0x48c4, 0x58e5,
    0x6886, 0x78a7, 0x0840, 0x1861, 0x2802, 0x3823, 0xc9cc, 0xd9ed, 0xe98e, 0xf9af, 0x8948,
    0x9969, 0xa90a, 0xb92b, 0x5af5, 0x4ad4, 0x7ab7, 0x6a96, 0x1a71, 0x0a50, 0x3a33, 0x2a12,
    0xdbfd, 0xcbdc, 0xfbbf, 0xeb9e, 0x9b79, 0x8b58, 0xbb3b, 0xab1a, 0x6ca6, 0x7c87, 0x4ce4,
    0x5cc5, 0x2c22, 0x3c03, 0x0c60, 0x1c41, 0xedae, 0xfd8f, 0xcdec, 0xddcd, 0xad2a, 0xbd0b,
    0x8d68, 0x9d49, 0x7e97, 0x6eb6, 0x5ed5, 0x4ef4, 0x3e13, 0x2e32, 0x1e51, 0x0e70, 0xff9f,
    0xefbe, 0xdfdd, 0xcffc, 0xbf1b, 0xaf3a, 0x9f59, 0x8f78, 0x9188, 0x81a9, 0xb1ca, 0xa1eb,
    0xd10c, 0xc12d, 0xf14e, 0xe16f, 0x1080, 0x00a1, 0x30c2, 0x20e3, 0x5004, 0x4025, 0x7046,
    0x6067, 0x83b9, 0x9398, 0xa3fb, 0xb3da, 0xc33d, 0xd31c, 0xe37f, 0xf35e, 0x02b1, 0x1290,
    0x22f3, 0x32d2, 0x4235, 0x5214, 0x6277, 0x7256, 0xb5ea, 0xa5cb, 0x95a8, 0x8589, 0xf56e,
    0xe54f, 0xd52c, 0xc50d, 0x34e2, 0x24c3, 0x14a0, 0x0481, 0x7466, 0x6447, 0x5424, 0x4405,
    0xa7db, 0xb7fa, 0x8799, 0x97b8, 0xe75f, 0xf77e, 0xc71d, 0xd73c, 0x26d3, 0x36f2, 0x0691,
    0x16b0, 0x6657, 0x7676, 0x4615, 0x5634, 0xd94c, 0xc96d, 0xf90e, 0xe92f, 0x99c8, 0x89e9,
    0xb98a, 0xa9ab, 0x5844, 0x4865, 0x7806, 0x6827, 0x18c0, 0x08e1, 0x3882, 0x28a3, 0xcb7d,
    0xdb5c, 0xeb3f, 0xfb1e, 0x8bf9, 0x9bd8, 0xabbb, 0xbb9a, 0x4a75, 0x5a54, 0x6a37, 0x7a16,
    0x0af1, 0x1ad0, 0x2ab3, 0x3a92, 0xfd2e, 0xed0f, 0xdd6c, 0xcd4d, 0xbdaa, 0xad8b, 0x9de8,
    0x8dc9, 0x7c26, 0x6c07, 0x5c64, 0x4c45, 0x3ca2, 0x2c83, 0x1ce0, 0x0cc1, 0xef1f, 0xff3e,
    0xcf5d, 0xdf7c, 0xaf9b, 0xbfba, 0x8fd9, 0x9ff8, 0x6e17, 0x7e36, 0x4e55, 0x5e74, 0x2e93,
    0x3eb2, 0x0ed1, 0x1ef0};

uint16_t fw_crc16(const uint8_t *data, size_t len) {
    uint16_t crc = 0xFFFF;
    size_t i;
    for (i = 0; i < len; ++i) {
        crc = (uint16_t)((crc << 8) ^ CRC_TABLE[((crc >> 8) ^ data[i]) & 0xFF]);
    }
    return crc;
}

size_t fw_cobs_encode(const uint8_t *in, size_t len, uint8_t *out) {
    size_t code_pos = 0, o = 1, i;
    uint8_t code = 1;
    for (i = 0; i < len; ++i) {
        if (in[i] == 0) {
            out[code_pos] = code;
            code_pos = o++;
            code = 1;
        } else {
            out[o++] = in[i];
            if (++code == 0xFF) {
                out[code_pos] = code;
                code_pos = o++;
                code = 1;
            }
        }
    }
    out[code_pos] = code;
    return o;
}

long fw_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap) {
    size_t i = 0, o = 0;
    while (i < len) {
        uint8_t code = in[i];
        size_t j;
        if (code == 0 || i + code > len) return -1;
        for (j = 1; j < code; ++j) {
            if (in[i + j] == 0 || o >= cap) return -1;
            out[o++] = in[i + j];
        }
        i += code;
        if (code != 0xFF && i < len) {
            if (o >= cap) return -1;
            out[o++] = 0;
        }
    }
    return (long)o;
}

/* little-endian field access */
static void put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static void put_f32(uint8_t *p, float f) { uint32_t v; memcpy(&v, &f, 4); put_u32(p, v); }
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static float get_f32(const uint8_t *p) { uint32_t v = get_u32(p); float f; memcpy(&f, &v, 4); return f; }

/* Payload of `msg` into `p` (room for FW_MAX_PAYLOAD); the type is known. */
static void pack_payload(const fw_msg_t *m, uint8_t *p) {
    int k;
    switch (m->type) {
    case FW_MSG_SET_VEL:
    case FW_MSG_SET_PWM:
        put_f32(p, m->u.wheels.left); put_f32(p + 4, m->u.wheels.right);
        break;
    case FW_MSG_SET_PID:
        put_f32(p, m->u.pid.kp); put_f32(p + 4, m->u.pid.ki);
        put_f32(p + 8, m->u.pid.kd); put_f32(p + 12, m->u.pid.i_limit);
        break;
    case FW_MSG_CONFIG:
        put_u16(p, m->u.config.telemetry_period_ms); put_u16(p + 2, m->u.config.watchdog_ms);
        put_f32(p + 4, m->u.config.max_wheel_speed); put_u16(p + 8, m->u.config.ticks_per_rev);
        break;
    case FW_MSG_PING:
        put_u32(p, m->u.ping.token);
        break;
    case FW_MSG_TELEMETRY:
        put_u32(p, (uint32_t)m->u.telemetry.enc_left); put_u32(p + 4, (uint32_t)m->u.telemetry.enc_right);
        put_f32(p + 8, m->u.telemetry.speed_left); put_f32(p + 12, m->u.telemetry.speed_right);
        for (k = 0; k < 8; ++k) put_u16(p + 16 + 2 * k, m->u.telemetry.ranges_mm[k]);
        put_u32(p + 32, m->u.telemetry.mcu_time_us);
        put_u16(p + 36, m->u.telemetry.status); put_u16(p + 38, m->u.telemetry.last_cmd_seq);
        break;
    case FW_MSG_ACK:
    case FW_MSG_NACK:
        put_u16(p, m->u.ack.acked_seq); p[2] = m->u.ack.acked_type;
        if (m->type == FW_MSG_NACK) p[3] = m->u.ack.error;
        break;
    case FW_MSG_HELLO:
        p[0] = m->u.hello.protocol_version; put_u16(p + 1, m->u.hello.fw_version);
        put_u32(p + 3, m->u.hello.boot_count); p[7] = m->u.hello.reset_reason;
        break;
    default: /* RESET_ENC, ESTOP, CLEAR_ESTOP: empty */
        break;
    }
}

static void unpack_payload(const uint8_t *p, fw_msg_t *m) {
    int k;
    switch (m->type) {
    case FW_MSG_SET_VEL:
    case FW_MSG_SET_PWM:
        m->u.wheels.left = get_f32(p); m->u.wheels.right = get_f32(p + 4);
        break;
    case FW_MSG_SET_PID:
        m->u.pid.kp = get_f32(p); m->u.pid.ki = get_f32(p + 4);
        m->u.pid.kd = get_f32(p + 8); m->u.pid.i_limit = get_f32(p + 12);
        break;
    case FW_MSG_CONFIG:
        m->u.config.telemetry_period_ms = get_u16(p); m->u.config.watchdog_ms = get_u16(p + 2);
        m->u.config.max_wheel_speed = get_f32(p + 4); m->u.config.ticks_per_rev = get_u16(p + 8);
        break;
    case FW_MSG_PING:
        m->u.ping.token = get_u32(p);
        break;
    case FW_MSG_TELEMETRY:
        m->u.telemetry.enc_left = (int32_t)get_u32(p); m->u.telemetry.enc_right = (int32_t)get_u32(p + 4);
        m->u.telemetry.speed_left = get_f32(p + 8); m->u.telemetry.speed_right = get_f32(p + 12);
        for (k = 0; k < 8; ++k) m->u.telemetry.ranges_mm[k] = get_u16(p + 16 + 2 * k);
        m->u.telemetry.mcu_time_us = get_u32(p + 32);
        m->u.telemetry.status = get_u16(p + 36); m->u.telemetry.last_cmd_seq = get_u16(p + 38);
        break;
    case FW_MSG_ACK:
    case FW_MSG_NACK:
        m->u.ack.acked_seq = get_u16(p); m->u.ack.acked_type = p[2];
        m->u.ack.error = (m->type == FW_MSG_NACK) ? p[3] : 0;
        break;
    case FW_MSG_HELLO:
        m->u.hello.protocol_version = p[0]; m->u.hello.fw_version = get_u16(p + 1);
        m->u.hello.boot_count = get_u32(p + 3); m->u.hello.reset_reason = p[7];
        break;
    default:
        break;
    }
}

size_t fw_msg_encode(const fw_msg_t *msg, uint8_t *out, size_t cap) {
    uint8_t raw[FW_MAX_FRAME];
    const fw_msg_info_t *info = fw_msg_info(msg->type);
    size_t n, wire;
    uint16_t crc;
    if (info == NULL) return 0;
    raw[0] = FW_PROTOCOL_VERSION;
    raw[1] = msg->type;
    put_u16(raw + 2, msg->seq);
    put_u16(raw + 4, msg->ack);
    pack_payload(msg, raw + FW_HEADER_SIZE);
    n = FW_HEADER_SIZE + info->payload_size;
    crc = fw_crc16(raw, n);
    put_u16(raw + n, crc);
    n += FW_CRC_SIZE;
    if (cap < n + n / 254 + 2) return 0;
    wire = fw_cobs_encode(raw, n, out);
    out[wire++] = 0;
    return wire;
}

fw_decode_result_t fw_packet_decode(const uint8_t *packet, size_t len, fw_frame_t *frame) {
    uint8_t raw[FW_MAX_PACKET];
    long n;
    if (len > FW_MAX_PACKET) return FW_DECODE_OVERSIZE;
    n = fw_cobs_decode(packet, len, raw, sizeof raw);
    if (n < 0) return FW_DECODE_COBS;
    if (n < FW_HEADER_SIZE + FW_CRC_SIZE) return FW_DECODE_SHORT;
    if (fw_crc16(raw, (size_t)n - FW_CRC_SIZE) != get_u16(raw + n - FW_CRC_SIZE)) return FW_DECODE_CRC;
    if (n > FW_MAX_FRAME) return FW_DECODE_OVERSIZE; /* CRC-valid but longer than any message */
    frame->version = raw[0];
    frame->type = raw[1];
    frame->seq = get_u16(raw + 2);
    frame->ack = get_u16(raw + 4);
    frame->payload_len = (uint8_t)(n - FW_HEADER_SIZE - FW_CRC_SIZE);
    memcpy(frame->payload, raw + FW_HEADER_SIZE, frame->payload_len);
    return FW_DECODE_OK;
}

fw_error_t fw_frame_to_msg(const fw_frame_t *frame, fw_msg_t *msg) {
    const fw_msg_info_t *info;
    memset(msg, 0, sizeof *msg);
    msg->type = frame->type;
    msg->seq = frame->seq;
    msg->ack = frame->ack;
    /* HELLO's layout is frozen across versions: its protocol_version field tells the peer */
    if (frame->version != FW_PROTOCOL_VERSION && frame->type != FW_MSG_HELLO) return FW_ERR_BAD_VERSION;
    info = fw_msg_info(frame->type);
    if (info == NULL) return FW_ERR_UNKNOWN_TYPE;
    if (frame->payload_len != info->payload_size) return FW_ERR_BAD_LENGTH;
    unpack_payload(frame->payload, msg);
    return FW_ERR_NONE;
}

void fw_parser_init(fw_parser_t *p) { memset(p, 0, sizeof *p); }

fw_parse_result_t fw_parser_push(fw_parser_t *p, uint8_t byte, fw_frame_t *out) {
    fw_decode_result_t r;
    size_t len;
    if (byte != 0) {
        if (p->discarding) {
            p->bytes_discarded++;
            return FW_PARSE_NONE;
        }
        if (p->len == FW_MAX_PACKET) {
            p->discarding = 1;
            p->oversize++;
            p->bytes_discarded += (uint32_t)p->len + 1;
            p->len = 0;
            return FW_PARSE_OVERSIZE;
        }
        p->buf[p->len++] = byte;
        return FW_PARSE_NONE;
    }
    /* delimiter */
    if (p->discarding) {
        p->discarding = 0;
        return FW_PARSE_NONE;
    }
    len = p->len;
    p->len = 0;
    if (len == 0) return FW_PARSE_NONE; /* empty packet: flush marker */
    r = fw_packet_decode(p->buf, len, out);
    if (r == FW_DECODE_OK) {
        p->frames_ok++;
        return FW_PARSE_FRAME;
    }
    p->bytes_discarded += (uint32_t)len;
    if (r == FW_DECODE_CRC) {
        p->crc_errors++;
        return FW_PARSE_CRC_ERROR;
    }
    p->frame_errors++;
    return FW_PARSE_FRAME_ERROR;
}

long fw_packet_reencode(const uint8_t *packet, size_t len, uint8_t *out, size_t cap) {
    fw_frame_t frame;
    fw_msg_t msg;
    fw_decode_result_t r = fw_packet_decode(packet, len, &frame);
    fw_error_t e;
    size_t n;
    if (r != FW_DECODE_OK) return (long)r;
    e = fw_frame_to_msg(&frame, &msg);
    if (e != FW_ERR_NONE) return -10 - (long)e;
    n = fw_msg_encode(&msg, out, cap);
    return n ? (long)n : -9;
}
