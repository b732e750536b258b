/* Hardware abstraction of the firmware core: everything the core needs from the board.
 *
 * The ESP32 app (esp32/src/main.cpp), the host emulator (emulator/fw_emulator.c) and the
 * Python simulator (edge/sim/esp32.py, through ctypes) each fill one of these. The struct is
 * plain C (a context pointer and function pointers only) so ctypes can build it:
 *
 *     class FwHal(ctypes.Structure):
 *         _fields_ = [("ctx", c_void_p),
 *                     ("motor_set", CFUNCTYPE(None, c_void_p, c_int, c_float)),
 *                     ("encoder_read", CFUNCTYPE(c_int32, c_void_p, c_int)),
 *                     ("range_read", CFUNCTYPE(c_float, c_void_p, c_int)),
 *                     ("micros", CFUNCTYPE(c_uint64, c_void_p)),
 *                     ("uart_write", CFUNCTYPE(None, c_void_p, POINTER(c_uint8), c_size_t))]
 *
 * All five functions are required (fw_create returns NULL if one is missing). They are
 * called only from fw_create, fw_rx and fw_poll, on the caller's thread.
 */
#ifndef FW_HAL_H
#define FW_HAL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FW_NUM_WHEELS 2  /* wheel 0 = left, 1 = right */
#define FW_NUM_RANGES 8  /* index 0 = forward, counter-clockwise in 45 degree steps */

typedef struct fw_hal {
    void *ctx; /* passed back unchanged as the first argument of every call */
    /* Drive one motor. duty in [-1, 1]; sign = direction (positive drives the wheel forward,
     * i.e. makes its encoder count up). Called at the control rate and at once on stop. */
    void (*motor_set)(void *ctx, int wheel, float duty);
    /* Cumulative quadrature count of one wheel since power-up (int32, may wrap). */
    int32_t (*encoder_read)(void *ctx, int wheel);
    /* Latest reading of range sensor `index` in metres; NaN = no reading. Must not block:
     * slow sensors are read elsewhere and cached. */
    float (*range_read)(void *ctx, int index);
    /* Monotonic microseconds since boot. */
    uint64_t (*micros)(void *ctx);
    /* Send bytes to the host. The core passes each complete frame (with its 0x00 delimiter)
     * in exactly one call, so an implementation that must drop data can drop whole frames. */
    void (*uart_write)(void *ctx, const uint8_t *buf, size_t len);
} fw_hal_t;

#ifdef __cplusplus
}
#endif

#endif /* FW_HAL_H */
