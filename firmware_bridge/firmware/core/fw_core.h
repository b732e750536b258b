/* Firmware core: command handling, command watchdog, latched e-stop, per-wheel PID velocity
 * control, telemetry, HELLO at boot. Portable C99; hardware only through fw_hal_t (hal.h).
 *
 * Used by the ESP32 app (esp32/src/main.cpp), the host emulator (emulator/fw_emulator.c) and
 * the Python simulator through ctypes (libfwcore.so). Usage:
 *
 *     fw_core_t *fw = fw_create(&hal, boot_count, FW_RESET_POWER_ON);   // sends HELLO
 *     for (;;) {
 *         n = read_uart(buf, sizeof buf);  fw_rx(fw, buf, n);   // any chunking
 *         fw_poll(fw);                                           // >= 1 kHz
 *     }
 *
 * Not thread-safe: call fw_rx, fw_poll and the getters from one thread (or under one lock).
 * All protocol behaviour is specified in firmware_bridge/PROTOCOL.md.
 */
#ifndef FW_CORE_H
#define FW_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "fw_protocol.h"
#include "hal.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FW_VERSION 0x0100u            /* firmware version reported in HELLO: major << 8 | minor */
#define FW_CONTROL_PERIOD_US 5000u    /* PID rate: 200 Hz */
#define FW_SPEED_WINDOW 4             /* speed = count delta over the last 4 control periods (20 ms) */

/* Defaults until the host sends CONFIG / SET_PID. */
#define FW_DEFAULT_TELEMETRY_PERIOD_MS 10u
#define FW_DEFAULT_WATCHDOG_MS 200u
#define FW_DEFAULT_MAX_WHEEL_SPEED 10.0f /* rad/s */
#define FW_DEFAULT_TICKS_PER_REV 1320u
#define FW_DEFAULT_KP 0.05f
#define FW_DEFAULT_KI 0.5f
#define FW_DEFAULT_KD 0.0f
#define FW_DEFAULT_I_LIMIT 1.0f

typedef struct fw_core fw_core_t;

/* Create the core and send HELLO (seq 0) through hal->uart_write. The HAL struct is copied.
 * reset_reason is a fw_reset_reason_t. Returns NULL if hal or one of its functions is NULL,
 * or if allocation fails. */
fw_core_t *fw_create(const fw_hal_t *hal, uint32_t boot_count, uint8_t reset_reason);
void fw_destroy(fw_core_t *fw);

/* Feed received UART bytes (any chunking). Complete commands are handled at once; ACK/NACK
 * replies are written through hal->uart_write before fw_rx returns. */
void fw_rx(fw_core_t *fw, const uint8_t *buf, size_t len);

/* Run the periodic work: command watchdog (checked on every call), PID every
 * FW_CONTROL_PERIOD_US, TELEMETRY every telemetry_period_ms. Call at >= 1 kHz. */
void fw_poll(fw_core_t *fw);

/* ---- read-only getters (tests, simulator, emulator) ---- */

/* Operating mode: idle (motors held at 0), closed-loop velocity, open-loop duty. */
typedef enum { FW_MODE_IDLE = 0, FW_MODE_VELOCITY = 1, FW_MODE_PWM = 2 } fw_mode_t;

uint16_t fw_status(const fw_core_t *fw);                 /* FW_STATUS_* bits as in TELEMETRY */
int fw_mode(const fw_core_t *fw);                        /* fw_mode_t */
float fw_target_speed(const fw_core_t *fw, int wheel);   /* rad/s, after clamping */
float fw_motor_duty(const fw_core_t *fw, int wheel);     /* last duty given to motor_set */
float fw_measured_speed(const fw_core_t *fw, int wheel); /* rad/s, as in TELEMETRY */
int32_t fw_encoder_count(const fw_core_t *fw, int wheel);/* counts since boot/RESET_ENC, as in TELEMETRY */
float fw_pid_integral(const fw_core_t *fw, int wheel);   /* PID integral term, duty */
uint16_t fw_last_cmd_seq(const fw_core_t *fw);

typedef enum {
    FW_PARAM_TELEMETRY_PERIOD_MS = 0,
    FW_PARAM_WATCHDOG_MS = 1,
    FW_PARAM_MAX_WHEEL_SPEED = 2,
    FW_PARAM_TICKS_PER_REV = 3,
    FW_PARAM_KP = 4,
    FW_PARAM_KI = 5,
    FW_PARAM_KD = 6,
    FW_PARAM_I_LIMIT = 7,
    FW_PARAM_COUNT
} fw_param_t;
float fw_param(const fw_core_t *fw, int param);          /* current value; NaN for an unknown id */

typedef enum {
    FW_CNT_RX_FRAMES = 0,        /* CRC-valid frames received */
    FW_CNT_RX_CRC_ERRORS,        /* packets dropped for a CRC mismatch */
    FW_CNT_RX_FRAME_ERRORS,      /* packets dropped for bad COBS / too short / too long */
    FW_CNT_RX_OVERSIZE,          /* packets longer than FW_MAX_PACKET dropped */
    FW_CNT_RX_BYTES_DISCARDED,   /* bytes of dropped packets */
    FW_CNT_TX_FRAMES,            /* frames written to the UART */
    FW_CNT_TELEMETRY_SENT,
    FW_CNT_ACKS_SENT,
    FW_CNT_NACKS_SENT,
    FW_CNT_WATCHDOG_TRIPS,
    FW_CNT_IGNORED_WHILE_ESTOP,  /* SET_VEL frames ignored because the e-stop was latched */
    FW_CNT_COUNT
} fw_counter_t;
uint32_t fw_counter(const fw_core_t *fw, int counter);   /* 0 for an unknown id */

#ifdef __cplusplus
}
#endif

#endif /* FW_CORE_H */
