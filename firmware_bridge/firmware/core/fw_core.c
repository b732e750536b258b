/* Firmware core: see fw_core.h and firmware_bridge/PROTOCOL.md. */
#include "fw_core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fw_pid.h"

#define TWO_PI 6.283185307179586f

struct fw_core {
    fw_hal_t hal;
    fw_parser_t parser;
    fw_config_t config;
    fw_pid_t pid[FW_NUM_WHEELS];
    int mode;                       /* fw_mode_t */
    float target[FW_NUM_WHEELS];    /* rad/s (velocity mode) */
    float pwm[FW_NUM_WHEELS];       /* duty (PWM mode) */
    float duty[FW_NUM_WHEELS];      /* last duty given to the motors */
    float speed[FW_NUM_WHEELS];     /* measured, rad/s */
    int32_t enc_offset[FW_NUM_WHEELS];
    /* ring of (time, raw counts) of the last FW_SPEED_WINDOW + 1 control steps */
    uint64_t hist_time[FW_SPEED_WINDOW + 1];
    int32_t hist_counts[FW_SPEED_WINDOW + 1][FW_NUM_WHEELS];
    int hist_len, hist_head;
    uint64_t last_control_us, last_telemetry_us, last_motion_us;
    int estop_latched, watchdog_tripped, rx_error;
    uint16_t tx_seq, last_rx_seq, last_cmd_seq;
    uint32_t counters[FW_CNT_COUNT];
};

static float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

static void send(fw_core_t *fw, fw_msg_t *msg) {
    uint8_t wire[FW_MAX_WIRE];
    size_t n;
    msg->seq = fw->tx_seq++;
    msg->ack = fw->last_rx_seq;
    n = fw_msg_encode(msg, wire, sizeof wire);
    if (n == 0) return; /* unreachable: all types sent here are known and fit */
    fw->hal.uart_write(fw->hal.ctx, wire, n);
    fw->counters[FW_CNT_TX_FRAMES]++;
}

static void send_ack(fw_core_t *fw, const fw_msg_t *cmd) {
    fw_msg_t m;
    memset(&m, 0, sizeof m);
    m.type = FW_MSG_ACK;
    m.u.ack.acked_seq = cmd->seq;
    m.u.ack.acked_type = cmd->type;
    send(fw, &m);
    fw->counters[FW_CNT_ACKS_SENT]++;
}

static void send_nack(fw_core_t *fw, uint16_t seq, uint8_t type, fw_error_t err) {
    fw_msg_t m;
    memset(&m, 0, sizeof m);
    m.type = FW_MSG_NACK;
    m.u.ack.acked_seq = seq;
    m.u.ack.acked_type = type;
    m.u.ack.error = (uint8_t)err;
    send(fw, &m);
    fw->counters[FW_CNT_NACKS_SENT]++;
}

static void set_motors(fw_core_t *fw, float left, float right) {
    fw->duty[0] = left;
    fw->duty[1] = right;
    fw->hal.motor_set(fw->hal.ctx, 0, left);
    fw->hal.motor_set(fw->hal.ctx, 1, right);
}

/* Motors to 0 now, controllers reset, idle until the next motion command. */
static void stop_motors(fw_core_t *fw) {
    int w;
    fw->mode = FW_MODE_IDLE;
    for (w = 0; w < FW_NUM_WHEELS; ++w) {
        fw->target[w] = 0.0f;
        fw->pwm[w] = 0.0f;
        fw_pid_reset(&fw->pid[w]);
    }
    set_motors(fw, 0.0f, 0.0f);
}

static void reset_pids(fw_core_t *fw) {
    int w;
    for (w = 0; w < FW_NUM_WHEELS; ++w) fw_pid_reset(&fw->pid[w]);
}

static uint16_t status_bits(const fw_core_t *fw) {
    uint16_t s = 0;
    if (fw->estop_latched) s |= FW_STATUS_ESTOP_LATCHED;
    if (fw->watchdog_tripped) s |= FW_STATUS_WATCHDOG_TRIPPED;
    if (fw->mode != FW_MODE_IDLE) s |= FW_STATUS_MOTORS_ENABLED;
    if (fw->mode == FW_MODE_PWM) s |= FW_STATUS_PWM_MODE;
    if (fw->rx_error) s |= FW_STATUS_RX_ERROR;
    return s;
}

static int finite2(float a, float b) { return isfinite(a) && isfinite(b); }

/* Motion command accepted: feeds the watchdog and clears its trip. */
static void motion_fed(fw_core_t *fw, uint64_t now) {
    fw->last_motion_us = now;
    fw->watchdog_tripped = 0;
}

static void handle(fw_core_t *fw, const fw_frame_t *frame, uint64_t now) {
    fw_msg_t msg;
    const fw_msg_info_t *info;
    fw_error_t err;
    int w;

    fw->last_rx_seq = frame->seq;
    err = fw_frame_to_msg(frame, &msg);
    info = fw_msg_info(frame->type);
    if (err == FW_ERR_NONE && !info->host_to_mcu) err = FW_ERR_UNKNOWN_TYPE;
    if (err != FW_ERR_NONE) {
        send_nack(fw, frame->seq, frame->type, err);
        return;
    }

    switch (msg.type) {
    case FW_MSG_SET_VEL:
        if (!finite2(msg.u.wheels.left, msg.u.wheels.right)) {
            send_nack(fw, msg.seq, msg.type, FW_ERR_BAD_VALUE);
            return;
        }
        if (fw->estop_latched) {
            fw->counters[FW_CNT_IGNORED_WHILE_ESTOP]++;
            return;
        }
        if (fw->mode != FW_MODE_VELOCITY) {
            reset_pids(fw);
            fw->mode = FW_MODE_VELOCITY;
        }
        fw->target[0] = clampf(msg.u.wheels.left, -fw->config.max_wheel_speed, fw->config.max_wheel_speed);
        fw->target[1] = clampf(msg.u.wheels.right, -fw->config.max_wheel_speed, fw->config.max_wheel_speed);
        motion_fed(fw, now);
        fw->last_cmd_seq = msg.seq;
        return; /* not acked */

    case FW_MSG_SET_PWM:
        if (fw->estop_latched) {
            send_nack(fw, msg.seq, msg.type, FW_ERR_ESTOP_LATCHED);
            return;
        }
        if (!finite2(msg.u.wheels.left, msg.u.wheels.right)) {
            send_nack(fw, msg.seq, msg.type, FW_ERR_BAD_VALUE);
            return;
        }
        fw->mode = FW_MODE_PWM;
        fw->pwm[0] = clampf(msg.u.wheels.left, -1.0f, 1.0f);
        fw->pwm[1] = clampf(msg.u.wheels.right, -1.0f, 1.0f);
        motion_fed(fw, now);
        break;

    case FW_MSG_SET_PID: {
        const fw_pid_gains_t *g = &msg.u.pid;
        if (!finite2(g->kp, g->ki) || !finite2(g->kd, g->i_limit) || g->kp < 0.0f || g->ki < 0.0f ||
            g->kd < 0.0f || g->i_limit < 0.0f) {
            send_nack(fw, msg.seq, msg.type, FW_ERR_BAD_VALUE);
            return;
        }
        for (w = 0; w < FW_NUM_WHEELS; ++w) {
            fw->pid[w].kp = g->kp;
            fw->pid[w].ki = g->ki;
            fw->pid[w].kd = g->kd;
            fw->pid[w].i_limit = g->i_limit;
            fw_pid_reset(&fw->pid[w]);
        }
        break;
    }

    case FW_MSG_RESET_ENC:
        for (w = 0; w < FW_NUM_WHEELS; ++w) fw->enc_offset[w] = fw->hal.encoder_read(fw->hal.ctx, w);
        break;

    case FW_MSG_CONFIG: {
        const fw_config_t *c = &msg.u.config;
        if (c->watchdog_ms < 10 || c->watchdog_ms > 5000 || !isfinite(c->max_wheel_speed) ||
            !(c->max_wheel_speed > 0.0f) || c->ticks_per_rev == 0) {
            send_nack(fw, msg.seq, msg.type, FW_ERR_BAD_VALUE);
            return;
        }
        if (c->telemetry_period_ms != fw->config.telemetry_period_ms) fw->last_telemetry_us = now;
        fw->config = *c;
        for (w = 0; w < FW_NUM_WHEELS; ++w) {
            fw->target[w] = clampf(fw->target[w], -c->max_wheel_speed, c->max_wheel_speed);
        }
        break;
    }

    case FW_MSG_ESTOP:
        fw->estop_latched = 1;
        stop_motors(fw);
        break;

    case FW_MSG_CLEAR_ESTOP:
        fw->estop_latched = 0;
        break;

    case FW_MSG_PING:
        break;

    default: /* host_to_mcu types are all handled above */
        return;
    }
    fw->last_cmd_seq = msg.seq;
    send_ack(fw, &msg);
}

static void control_step(fw_core_t *fw, uint64_t now) {
    int w, oldest;
    float dt = (float)(now - fw->last_control_us) * 1e-6f;
    int32_t counts[FW_NUM_WHEELS];

    fw->last_control_us = now;
    for (w = 0; w < FW_NUM_WHEELS; ++w) counts[w] = fw->hal.encoder_read(fw->hal.ctx, w);

    /* push into the ring; speed from the oldest entry kept */
    fw->hist_head = (fw->hist_head + 1) % (FW_SPEED_WINDOW + 1);
    fw->hist_time[fw->hist_head] = now;
    for (w = 0; w < FW_NUM_WHEELS; ++w) fw->hist_counts[fw->hist_head][w] = counts[w];
    if (fw->hist_len < FW_SPEED_WINDOW + 1) fw->hist_len++;
    oldest = (fw->hist_head + FW_SPEED_WINDOW + 1 - (fw->hist_len - 1)) % (FW_SPEED_WINDOW + 1);
    if (fw->hist_len > 1 && fw->hist_time[fw->hist_head] > fw->hist_time[oldest]) {
        float span = (float)(fw->hist_time[fw->hist_head] - fw->hist_time[oldest]) * 1e-6f;
        float rad_per_count = TWO_PI / (float)fw->config.ticks_per_rev;
        for (w = 0; w < FW_NUM_WHEELS; ++w) {
            int32_t delta = (int32_t)((uint32_t)counts[w] - (uint32_t)fw->hist_counts[oldest][w]);
            fw->speed[w] = (float)delta * rad_per_count / span;
        }
    }

    switch (fw->mode) {
    case FW_MODE_VELOCITY:
        set_motors(fw, fw_pid_step(&fw->pid[0], fw->target[0], fw->speed[0], dt),
                   fw_pid_step(&fw->pid[1], fw->target[1], fw->speed[1], dt));
        break;
    case FW_MODE_PWM:
        set_motors(fw, fw->pwm[0], fw->pwm[1]);
        break;
    default:
        set_motors(fw, 0.0f, 0.0f);
        break;
    }
}

static uint16_t range_to_mm(float metres) {
    float mm;
    if (!isfinite(metres) || metres < 0.0f) return FW_RANGE_NO_READING;
    mm = metres * 1000.0f + 0.5f;
    return mm >= 65534.0f ? (uint16_t)65534u : (uint16_t)mm;
}

static void send_telemetry(fw_core_t *fw, uint64_t now) {
    fw_msg_t m;
    int i;
    memset(&m, 0, sizeof m);
    m.type = FW_MSG_TELEMETRY;
    m.u.telemetry.enc_left = fw_encoder_count(fw, 0);
    m.u.telemetry.enc_right = fw_encoder_count(fw, 1);
    m.u.telemetry.speed_left = fw->speed[0];
    m.u.telemetry.speed_right = fw->speed[1];
    for (i = 0; i < FW_NUM_RANGES; ++i) m.u.telemetry.ranges_mm[i] = range_to_mm(fw->hal.range_read(fw->hal.ctx, i));
    m.u.telemetry.mcu_time_us = (uint32_t)now;
    m.u.telemetry.status = status_bits(fw);
    m.u.telemetry.last_cmd_seq = fw->last_cmd_seq;
    fw->rx_error = 0;
    send(fw, &m);
    fw->counters[FW_CNT_TELEMETRY_SENT]++;
}

fw_core_t *fw_create(const fw_hal_t *hal, uint32_t boot_count, uint8_t reset_reason) {
    fw_core_t *fw;
    fw_msg_t hello;
    int w;
    uint64_t now;
    if (hal == NULL || hal->motor_set == NULL || hal->encoder_read == NULL || hal->range_read == NULL ||
        hal->micros == NULL || hal->uart_write == NULL) {
        return NULL;
    }
    fw = (fw_core_t *)calloc(1, sizeof *fw);
    if (fw == NULL) return NULL;
    fw->hal = *hal;
    fw_parser_init(&fw->parser);
    fw->config.telemetry_period_ms = FW_DEFAULT_TELEMETRY_PERIOD_MS;
    fw->config.watchdog_ms = FW_DEFAULT_WATCHDOG_MS;
    fw->config.max_wheel_speed = FW_DEFAULT_MAX_WHEEL_SPEED;
    fw->config.ticks_per_rev = FW_DEFAULT_TICKS_PER_REV;
    for (w = 0; w < FW_NUM_WHEELS; ++w) {
        fw->pid[w].kp = FW_DEFAULT_KP;
        fw->pid[w].ki = FW_DEFAULT_KI;
        fw->pid[w].kd = FW_DEFAULT_KD;
        fw->pid[w].i_limit = FW_DEFAULT_I_LIMIT;
    }
    now = hal->micros(hal->ctx);
    fw->last_control_us = fw->last_telemetry_us = fw->last_motion_us = now;
    fw->hist_time[0] = now;
    for (w = 0; w < FW_NUM_WHEELS; ++w) fw->hist_counts[0][w] = hal->encoder_read(hal->ctx, w);
    fw->hist_len = 1;
    stop_motors(fw);

    memset(&hello, 0, sizeof hello);
    hello.type = FW_MSG_HELLO;
    hello.u.hello.protocol_version = FW_PROTOCOL_VERSION;
    hello.u.hello.fw_version = FW_VERSION;
    hello.u.hello.boot_count = boot_count;
    hello.u.hello.reset_reason = reset_reason;
    send(fw, &hello);
    return fw;
}

void fw_destroy(fw_core_t *fw) { free(fw); }

void fw_rx(fw_core_t *fw, const uint8_t *buf, size_t len) {
    size_t i;
    fw_frame_t frame;
    for (i = 0; i < len; ++i) {
        fw_parse_result_t r = fw_parser_push(&fw->parser, buf[i], &frame);
        if (r == FW_PARSE_FRAME) {
            handle(fw, &frame, fw->hal.micros(fw->hal.ctx));
        } else if (r != FW_PARSE_NONE) {
            fw->rx_error = 1;
        }
    }
}

void fw_poll(fw_core_t *fw) {
    uint64_t now = fw->hal.micros(fw->hal.ctx);
    uint64_t period_us;

    if (fw->mode != FW_MODE_IDLE && now - fw->last_motion_us > (uint64_t)fw->config.watchdog_ms * 1000u) {
        stop_motors(fw);
        fw->watchdog_tripped = 1;
        fw->counters[FW_CNT_WATCHDOG_TRIPS]++;
    }
    if (now - fw->last_control_us >= FW_CONTROL_PERIOD_US) control_step(fw, now);

    period_us = (uint64_t)fw->config.telemetry_period_ms * 1000u;
    if (period_us > 0 && now - fw->last_telemetry_us >= period_us) {
        fw->last_telemetry_us += period_us;
        if (now - fw->last_telemetry_us >= period_us) fw->last_telemetry_us = now; /* fell behind */
        send_telemetry(fw, now);
    }
}

uint16_t fw_status(const fw_core_t *fw) { return status_bits(fw); }
int fw_mode(const fw_core_t *fw) { return fw->mode; }

static int wheel_ok(int wheel) { return wheel >= 0 && wheel < FW_NUM_WHEELS; }

float fw_target_speed(const fw_core_t *fw, int wheel) { return wheel_ok(wheel) ? fw->target[wheel] : NAN; }
float fw_motor_duty(const fw_core_t *fw, int wheel) { return wheel_ok(wheel) ? fw->duty[wheel] : NAN; }
float fw_measured_speed(const fw_core_t *fw, int wheel) { return wheel_ok(wheel) ? fw->speed[wheel] : NAN; }
float fw_pid_integral(const fw_core_t *fw, int wheel) { return wheel_ok(wheel) ? fw->pid[wheel].integral : NAN; }

int32_t fw_encoder_count(const fw_core_t *fw, int wheel) {
    if (!wheel_ok(wheel)) return 0;
    return (int32_t)((uint32_t)fw->hal.encoder_read(fw->hal.ctx, wheel) - (uint32_t)fw->enc_offset[wheel]);
}

uint16_t fw_last_cmd_seq(const fw_core_t *fw) { return fw->last_cmd_seq; }

float fw_param(const fw_core_t *fw, int param) {
    switch (param) {
    case FW_PARAM_TELEMETRY_PERIOD_MS: return (float)fw->config.telemetry_period_ms;
    case FW_PARAM_WATCHDOG_MS: return (float)fw->config.watchdog_ms;
    case FW_PARAM_MAX_WHEEL_SPEED: return fw->config.max_wheel_speed;
    case FW_PARAM_TICKS_PER_REV: return (float)fw->config.ticks_per_rev;
    case FW_PARAM_KP: return fw->pid[0].kp;
    case FW_PARAM_KI: return fw->pid[0].ki;
    case FW_PARAM_KD: return fw->pid[0].kd;
    case FW_PARAM_I_LIMIT: return fw->pid[0].i_limit;
    default: return NAN;
    }
}

uint32_t fw_counter(const fw_core_t *fw, int counter) {
    switch (counter) {
    case FW_CNT_RX_FRAMES: return fw->parser.frames_ok;
    case FW_CNT_RX_CRC_ERRORS: return fw->parser.crc_errors;
    case FW_CNT_RX_FRAME_ERRORS: return fw->parser.frame_errors;
    case FW_CNT_RX_OVERSIZE: return fw->parser.oversize;
    case FW_CNT_RX_BYTES_DISCARDED: return fw->parser.bytes_discarded;
    default: return (counter >= 0 && counter < FW_CNT_COUNT) ? fw->counters[counter] : 0u;
    }
}
