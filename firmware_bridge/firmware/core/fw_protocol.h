/* Wire protocol v1, C side: message layout, COBS, CRC-16/CCITT-FALSE, streaming parser.
 *
 * The byte-level spec is firmware_bridge/PROTOCOL.md; the Python twin is
 * firmware_bridge/protocol.py. Both are checked against firmware_bridge/golden_frames.json.
 * Pure functions and plain structs: no allocation, no I/O, no globals.
 */
#ifndef FW_PROTOCOL_H
#define FW_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FW_PROTOCOL_VERSION 1
#define FW_HEADER_SIZE 6   /* version u8, type u8, seq u16, ack u16 */
#define FW_CRC_SIZE 2
#define FW_MAX_PAYLOAD 40  /* TELEMETRY */
#define FW_MAX_FRAME (FW_HEADER_SIZE + FW_MAX_PAYLOAD + FW_CRC_SIZE) /* 48, before COBS */
#define FW_MAX_PACKET 64   /* longest COBS packet accepted (delimiter excluded) */
#define FW_MAX_WIRE (FW_MAX_FRAME + 2) /* COBS overhead (1 for < 254 bytes) + delimiter */

typedef enum {
    FW_MSG_SET_VEL = 0x01,
    FW_MSG_SET_PWM = 0x02,
    FW_MSG_SET_PID = 0x03,
    FW_MSG_RESET_ENC = 0x04,
    FW_MSG_CONFIG = 0x05,
    FW_MSG_ESTOP = 0x06,
    FW_MSG_CLEAR_ESTOP = 0x07,
    FW_MSG_PING = 0x08,
    FW_MSG_TELEMETRY = 0x81,
    FW_MSG_ACK = 0x82,
    FW_MSG_NACK = 0x83,
    FW_MSG_HELLO = 0x84
} fw_msg_type_t;

/* TELEMETRY status bits */
#define FW_STATUS_ESTOP_LATCHED 0x0001u
#define FW_STATUS_WATCHDOG_TRIPPED 0x0002u
#define FW_STATUS_MOTORS_ENABLED 0x0004u
#define FW_STATUS_PWM_MODE 0x0008u
#define FW_STATUS_RX_ERROR 0x0010u

/* NACK error codes */
typedef enum {
    FW_ERR_NONE = 0,
    FW_ERR_UNKNOWN_TYPE = 1,
    FW_ERR_BAD_LENGTH = 2,
    FW_ERR_BAD_VERSION = 3,
    FW_ERR_ESTOP_LATCHED = 4,
    FW_ERR_BAD_VALUE = 5
} fw_error_t;

/* HELLO reset reasons */
typedef enum {
    FW_RESET_UNKNOWN = 0,
    FW_RESET_POWER_ON = 1,
    FW_RESET_EXTERNAL = 2,
    FW_RESET_SOFTWARE = 3,
    FW_RESET_PANIC = 4,
    FW_RESET_WATCHDOG = 5,
    FW_RESET_BROWNOUT = 6,
    FW_RESET_DEEP_SLEEP = 7
} fw_reset_reason_t;

#define FW_RANGE_NO_READING 0xFFFFu

typedef struct { float left, right; } fw_wheels_t;                /* SET_VEL rad/s, SET_PWM duty */
typedef struct { float kp, ki, kd, i_limit; } fw_pid_gains_t;     /* SET_PID */
typedef struct {                                                  /* CONFIG */
    uint16_t telemetry_period_ms;
    uint16_t watchdog_ms;
    float max_wheel_speed; /* rad/s */
    uint16_t ticks_per_rev;
} fw_config_t;
typedef struct { uint32_t token; } fw_ping_t;                     /* PING */
typedef struct {                                                  /* TELEMETRY */
    int32_t enc_left, enc_right;   /* counts */
    float speed_left, speed_right; /* rad/s */
    uint16_t ranges_mm[8];         /* 0xFFFF = no reading */
    uint32_t mcu_time_us;
    uint16_t status;               /* FW_STATUS_* */
    uint16_t last_cmd_seq;
} fw_telemetry_t;
typedef struct { uint16_t acked_seq; uint8_t acked_type; uint8_t error; } fw_ack_t; /* ACK (error unused) / NACK */
typedef struct {                                                  /* HELLO */
    uint8_t protocol_version;
    uint16_t fw_version;
    uint32_t boot_count;
    uint8_t reset_reason;
} fw_hello_t;

/* One message: header fields plus the payload of its type. */
typedef struct {
    uint8_t type; /* fw_msg_type_t */
    uint16_t seq;
    uint16_t ack;
    union {
        fw_wheels_t wheels;       /* SET_VEL, SET_PWM */
        fw_pid_gains_t pid;       /* SET_PID */
        fw_config_t config;       /* CONFIG */
        fw_ping_t ping;           /* PING */
        fw_telemetry_t telemetry; /* TELEMETRY */
        fw_ack_t ack;             /* ACK, NACK */
        fw_hello_t hello;         /* HELLO */
    } u;
} fw_msg_t;

/* A CRC-checked frame whose payload is not interpreted yet. */
typedef struct {
    uint8_t version;
    uint8_t type;
    uint16_t seq;
    uint16_t ack;
    uint8_t payload_len;
    uint8_t payload[FW_MAX_PAYLOAD];
} fw_frame_t;

/* Message table entry (data, mirrors MESSAGES in protocol.py). */
typedef struct {
    uint8_t type;
    uint8_t payload_size;
    uint8_t host_to_mcu; /* 1: host -> MCU, 0: MCU -> host */
    uint8_t acked;       /* MCU answers it with ACK/NACK */
    const char *name;
} fw_msg_info_t;

/* Table entry of `type`, or NULL if the type is unknown. */
const fw_msg_info_t *fw_msg_info(uint8_t type);

/* CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor. */
uint16_t fw_crc16(const uint8_t *data, size_t len);

/* COBS-encode `len` bytes into `out` (room for len + len/254 + 1). Returns the encoded length. */
size_t fw_cobs_encode(const uint8_t *in, size_t len, uint8_t *out);

/* COBS-decode into `out` (capacity `cap`). Returns the decoded length, or -1 on a 0x00 byte,
 * a code running past the end, or output longer than `cap`. */
long fw_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap);

/* Encode a message as complete wire bytes (COBS + trailing 0x00) into `out`.
 * Returns the number of bytes written, or 0 if the type is unknown or `cap` is too small
 * (FW_MAX_WIRE is always enough). */
size_t fw_msg_encode(const fw_msg_t *msg, uint8_t *out, size_t cap);

/* Result of decoding one packet. */
typedef enum {
    FW_DECODE_OK = 0,
    FW_DECODE_COBS = -1,     /* bad COBS */
    FW_DECODE_SHORT = -2,    /* fewer bytes than header + CRC */
    FW_DECODE_CRC = -3,      /* CRC mismatch */
    FW_DECODE_OVERSIZE = -4  /* packet > FW_MAX_PACKET, or CRC-valid frame > FW_MAX_FRAME */
} fw_decode_result_t;

/* Decode one COBS packet (without delimiter) into a CRC-checked frame. */
fw_decode_result_t fw_packet_decode(const uint8_t *packet, size_t len, fw_frame_t *frame);

/* Interpret a frame's payload. Returns FW_ERR_NONE, FW_ERR_BAD_VERSION (any type but HELLO,
 * whose layout is frozen across versions), FW_ERR_UNKNOWN_TYPE or FW_ERR_BAD_LENGTH
 * (msg->type/seq/ack are filled in every case). */
fw_error_t fw_frame_to_msg(const fw_frame_t *frame, fw_msg_t *msg);

/* Streaming parser: push received bytes one at a time. */
typedef struct {
    uint8_t buf[FW_MAX_PACKET];
    size_t len;
    int discarding; /* dropping an oversize packet until the next 0x00 */
    uint32_t frames_ok, crc_errors, frame_errors, oversize, bytes_discarded;
} fw_parser_t;

typedef enum {
    FW_PARSE_NONE = 0,         /* byte consumed, no packet completed */
    FW_PARSE_FRAME = 1,        /* `out` holds a CRC-checked frame */
    FW_PARSE_CRC_ERROR = -1,   /* a packet ended and failed its CRC */
    FW_PARSE_FRAME_ERROR = -2, /* a packet ended with bad COBS or too short */
    FW_PARSE_OVERSIZE = -3     /* a packet grew past FW_MAX_PACKET; dropping until 0x00 */
} fw_parse_result_t;

void fw_parser_init(fw_parser_t *p);
fw_parse_result_t fw_parser_push(fw_parser_t *p, uint8_t byte, fw_frame_t *out);

/* Decode a packet (no delimiter) to a message and encode that message again into `out`.
 * Returns the wire length (>0), or a negative fw_decode_result_t, or -10 - fw_error_t for a
 * message-level error. Used by the cross-language tests (Python encodes, C re-encodes). */
long fw_packet_reencode(const uint8_t *packet, size_t len, uint8_t *out, size_t cap);

#ifdef __cplusplus
}
#endif

#endif /* FW_PROTOCOL_H */
