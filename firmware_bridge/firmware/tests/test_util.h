/* Shared helpers of the C tests: a fake HAL with a simulated drivetrain, output capture,
 * hex parsing and a tiny check macro. Header-only (each test is one executable). */
#ifndef TEST_UTIL_H
#define TEST_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw_core.h"

static int g_failures = 0;
#define CHECK(cond, ...)                                                          \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                         \
            fprintf(stderr, "\n");                                                \
            g_failures++;                                                         \
        }                                                                         \
    } while (0)

static inline size_t hex_to_bytes(const char *hex, uint8_t *out, size_t cap) {
    size_t n = 0;
    while (hex[0] && hex[1] && n < cap) {
        unsigned v;
        sscanf(hex, "%2x", &v);
        out[n++] = (uint8_t)v;
        hex += 2;
    }
    return n;
}

/* ---- fake HAL: two first-order motors (speed' = (duty * free_speed - speed) / tau),
 * quadrature counts integrated from speed, settable ranges, a manual clock, and the UART output
 * decoded into messages as it is written. */
#define SIM_MAX_MSGS 4096
typedef struct {
    uint64_t now_us;
    float duty[2];
    double speed[2];        /* rad/s */
    double counts_f[2];     /* fractional counts */
    int32_t counts_bias[2]; /* added to the encoder (wrap tests) */
    double free_speed;      /* rad/s at duty 1 */
    double tau;             /* s */
    double ticks_per_rev;
    float ranges[8];
    int motor_calls;
    /* captured output */
    fw_parser_t out_parser;
    fw_msg_t msgs[SIM_MAX_MSGS];
    int num_msgs;
    int bad_output;         /* frames the core wrote that do not decode */
    int write_calls;
    int partial_writes;     /* writes that were not exactly one frame */
} sim_t;

static inline void sim_motor_set(void *ctx, int wheel, float duty) {
    sim_t *s = (sim_t *)ctx;
    if (wheel >= 0 && wheel < 2) s->duty[wheel] = duty;
    s->motor_calls++;
}
static inline int32_t sim_encoder_read(void *ctx, int wheel) {
    sim_t *s = (sim_t *)ctx;
    return (int32_t)((uint32_t)(int64_t)floor(s->counts_f[wheel]) + (uint32_t)s->counts_bias[wheel]);
}
static inline float sim_range_read(void *ctx, int index) { return ((sim_t *)ctx)->ranges[index]; }
static inline uint64_t sim_micros(void *ctx) { return ((sim_t *)ctx)->now_us; }
static inline void sim_uart_write(void *ctx, const uint8_t *buf, size_t len) {
    sim_t *s = (sim_t *)ctx;
    size_t i;
    int frames = 0;
    s->write_calls++;
    for (i = 0; i < len; ++i) {
        fw_frame_t f;
        fw_parse_result_t r = fw_parser_push(&s->out_parser, buf[i], &f);
        if (r == FW_PARSE_FRAME) {
            fw_msg_t m;
            frames++;
            if (fw_frame_to_msg(&f, &m) != FW_ERR_NONE) s->bad_output++;
            else if (s->num_msgs < SIM_MAX_MSGS) s->msgs[s->num_msgs++] = m;
        } else if (r != FW_PARSE_NONE) {
            s->bad_output++;
        }
    }
    if (frames != 1 || buf[len - 1] != 0) s->partial_writes++;
}

static inline void sim_init(sim_t *s) {
    int i;
    memset(s, 0, sizeof *s);
    s->now_us = 1000000; /* boot at t = 1 s */
    s->free_speed = 15.0;
    s->tau = 0.08;
    s->ticks_per_rev = FW_DEFAULT_TICKS_PER_REV;
    for (i = 0; i < 8; ++i) s->ranges[i] = 1.0f;
    fw_parser_init(&s->out_parser);
}

static inline fw_hal_t sim_hal(sim_t *s) {
    fw_hal_t h;
    h.ctx = s;
    h.motor_set = sim_motor_set;
    h.encoder_read = sim_encoder_read;
    h.range_read = sim_range_read;
    h.micros = sim_micros;
    h.uart_write = sim_uart_write;
    return h;
}

/* Advance the plant and the clock by `ms` milliseconds, calling fw_poll every 1 ms. */
static inline void sim_run(sim_t *s, fw_core_t *fw, int ms) {
    int t, w;
    for (t = 0; t < ms; ++t) {
        for (w = 0; w < 2; ++w) {
            double dt = 1e-3;
            s->speed[w] += (s->duty[w] * s->free_speed - s->speed[w]) * dt / s->tau;
            s->counts_f[w] += s->speed[w] * dt * s->ticks_per_rev / (2.0 * 3.14159265358979);
        }
        s->now_us += 1000;
        fw_poll(fw);
    }
}

/* Encode a host command and feed it to the core. */
static inline void send_cmd(fw_core_t *fw, fw_msg_t *m) {
    uint8_t wire[FW_MAX_WIRE];
    size_t n = fw_msg_encode(m, wire, sizeof wire);
    fw_rx(fw, wire, n);
}

static inline fw_msg_t mk(uint8_t type, uint16_t seq) {
    fw_msg_t m;
    memset(&m, 0, sizeof m);
    m.type = type;
    m.seq = seq;
    return m;
}

/* Index of the last captured message of `type` at or after index `from`, or -1. */
static inline int last_msg(const sim_t *s, uint8_t type, int from) {
    int i;
    for (i = s->num_msgs - 1; i >= from; --i) {
        if (s->msgs[i].type == type) return i;
    }
    return -1;
}

static inline int count_msgs(const sim_t *s, uint8_t type, int from) {
    int i, n = 0;
    for (i = from; i < s->num_msgs; ++i) n += s->msgs[i].type == type;
    return n;
}

#endif /* TEST_UTIL_H */
