// ESP32 motor controller: Arduino-ESP32 implementation of the firmware core's HAL (hal.h).
//
// Everything protocol-related (framing, commands, watchdog, e-stop, PID, telemetry) lives in
// the portable core (../core, same code as the host emulator and the simulator). This file only
// wires it to the hardware:
//   * motors: LEDC PWM (20 kHz, 10 bit) + one direction pin each (TB6612/DRV8871-style driver,
//     PWM on the driver's PWM/EN input, DIR on its phase input);
//   * encoders: PCNT units in x4 quadrature mode, 16-bit hardware counts extended to int32 by
//     the limit interrupts;
//   * range sensors: 8 analog IR distance sensors (Sharp GP2Y0A21, 10-80 cm) on ADC pins;
//   * serial: `Serial` (UART0 through the board's USB bridge, or native USB-CDC on S2/S3/C3
//     builds with ARDUINO_USB_CDC_ON_BOOT=1) at FW_UART_BAUD;
//   * clock: esp_timer_get_time() (64-bit microseconds since boot);
//   * boot count in NVS (Preferences), reset reason from esp_reset_reason().
#include <Arduino.h>
#include <Preferences.h>
#include <driver/pcnt.h>
#include <esp_system.h>
#include <esp_timer.h>
#include <math.h>

#include "fw_core.h"

#ifndef FW_UART_BAUD
#define FW_UART_BAUD 921600
#endif

// ---- pin map (ESP32-DevKitC) -----------------------------------------------------------
static const int MOTOR_PWM_PIN[2] = {25, 27};   // left, right
static const int MOTOR_DIR_PIN[2] = {26, 14};
static const int ENC_A_PIN[2] = {18, 22};
static const int ENC_B_PIN[2] = {19, 23};
// +1 or -1 per wheel so that "forward" is positive duty and increasing counts for both sides
// (the right motor is usually mounted mirrored).
static const int WHEEL_SIGN[2] = {+1, -1};
// Range sensor i looks at bearing i * 45 degrees, counter-clockwise from forward. GPIO 4 and 13
// are ADC2 pins: usable because this firmware never starts Wi-Fi.
static const int RANGE_PIN[FW_NUM_RANGES] = {36, 39, 34, 35, 32, 33, 4, 13};

static const int PWM_FREQ_HZ = 20000;
static const int PWM_BITS = 10;
static const int PWM_MAX = (1 << PWM_BITS) - 1;
static const pcnt_unit_t PCNT_UNIT[2] = {PCNT_UNIT_0, PCNT_UNIT_1};
static const int16_t PCNT_LIMIT = 30000;  // hardware counter resets to 0 at +-PCNT_LIMIT

static volatile int32_t enc_accum[2];      // counts folded in by the limit interrupt

static void IRAM_ATTR pcnt_limit_isr(void *arg) {
    int w = (int)(intptr_t)arg;
    uint32_t status = 0;
    pcnt_get_event_status(PCNT_UNIT[w], &status);
    if (status & PCNT_EVT_H_LIM) enc_accum[w] += PCNT_LIMIT;
    if (status & PCNT_EVT_L_LIM) enc_accum[w] -= PCNT_LIMIT;
}

static void encoder_setup(int w) {
    // x4 quadrature, as in ESP-IDF's rotary encoder example: channel 0 counts edges of A with B
    // as direction, channel 1 counts edges of B with A as direction.
    pcnt_config_t c = {};
    c.unit = PCNT_UNIT[w];
    c.counter_h_lim = PCNT_LIMIT;
    c.counter_l_lim = -PCNT_LIMIT;
    c.channel = PCNT_CHANNEL_0;
    c.pulse_gpio_num = ENC_A_PIN[w];
    c.ctrl_gpio_num = ENC_B_PIN[w];
    c.pos_mode = PCNT_COUNT_DEC;
    c.neg_mode = PCNT_COUNT_INC;
    c.lctrl_mode = PCNT_MODE_REVERSE;
    c.hctrl_mode = PCNT_MODE_KEEP;
    pcnt_unit_config(&c);
    c.channel = PCNT_CHANNEL_1;
    c.pulse_gpio_num = ENC_B_PIN[w];
    c.ctrl_gpio_num = ENC_A_PIN[w];
    c.pos_mode = PCNT_COUNT_INC;
    c.neg_mode = PCNT_COUNT_DEC;
    pcnt_unit_config(&c);
    pcnt_set_filter_value(PCNT_UNIT[w], 100);  // ignore glitches < 100 APB cycles (1.25 us)
    pcnt_filter_enable(PCNT_UNIT[w]);
    pcnt_event_enable(PCNT_UNIT[w], PCNT_EVT_H_LIM);
    pcnt_event_enable(PCNT_UNIT[w], PCNT_EVT_L_LIM);
    pcnt_isr_handler_add(PCNT_UNIT[w], pcnt_limit_isr, (void *)(intptr_t)w);
    pcnt_counter_pause(PCNT_UNIT[w]);
    pcnt_counter_clear(PCNT_UNIT[w]);
    pcnt_counter_resume(PCNT_UNIT[w]);
}

// ---- HAL -------------------------------------------------------------------------------
static void hal_motor_set(void *, int wheel, float duty) {
    if (wheel < 0 || wheel > 1) return;
    float d = duty * (float)WHEEL_SIGN[wheel];
    if (!(d == d)) d = 0.0f;  // NaN -> stop (the core never sends one; belt and braces)
    if (d > 1.0f) d = 1.0f;
    if (d < -1.0f) d = -1.0f;
    digitalWrite(MOTOR_DIR_PIN[wheel], d >= 0.0f ? HIGH : LOW);
    ledcWrite(wheel, (uint32_t)lroundf(fabsf(d) * (float)PWM_MAX));  // LEDC channel = wheel
}

static int32_t hal_encoder_read(void *, int wheel) {
    int16_t count;
    int32_t accum;
    do {  // the limit interrupt may fire between the two reads: retry until consistent
        accum = enc_accum[wheel];
        pcnt_get_counter_value(PCNT_UNIT[wheel], &count);
    } while (accum != enc_accum[wheel]);
    return (accum + count) * WHEEL_SIGN[wheel];
}

// Sharp GP2Y0A21YK0F: distance_cm ~= 27.86 * V^-1.15 over 10-80 cm; below 0.35 V nothing is in
// range. Takes ~10 us per sensor (one ADC conversion), so it is read directly.
static float hal_range_read(void *, int index) {
    float volts = (float)analogReadMilliVolts(RANGE_PIN[index]) * 1e-3f;
    if (volts < 0.35f) return NAN;
    float metres = 0.2786f * powf(volts, -1.15f);
    return metres < 0.10f ? 0.10f : metres;  // closer than 10 cm reads as 10 cm (sensor fold-back)
}

static uint64_t hal_micros(void *) { return (uint64_t)esp_timer_get_time(); }

static void hal_uart_write(void *, const uint8_t *buf, size_t len) { Serial.write(buf, len); }

// ---- boot ------------------------------------------------------------------------------
static uint8_t reset_reason_code() {
    // Note: on the original ESP32 an EN-pin / DTR auto-reset reports ESP_RST_POWERON.
    switch (esp_reset_reason()) {
        case ESP_RST_POWERON: return FW_RESET_POWER_ON;
        case ESP_RST_EXT: return FW_RESET_EXTERNAL;
        case ESP_RST_SW: return FW_RESET_SOFTWARE;
        case ESP_RST_PANIC: return FW_RESET_PANIC;
        case ESP_RST_INT_WDT:
        case ESP_RST_TASK_WDT:
        case ESP_RST_WDT: return FW_RESET_WATCHDOG;
        case ESP_RST_BROWNOUT: return FW_RESET_BROWNOUT;
        case ESP_RST_DEEPSLEEP: return FW_RESET_DEEP_SLEEP;
        default: return FW_RESET_UNKNOWN;
    }
}

static uint32_t next_boot_count() {
    Preferences prefs;
    prefs.begin("fwcore", false);
    uint32_t n = prefs.getUInt("boots", 0) + 1;
    prefs.putUInt("boots", n);
    prefs.end();
    return n;
}

static fw_core_t *fw;

void setup() {
    // motors off before anything else
    for (int w = 0; w < 2; ++w) {
        pinMode(MOTOR_DIR_PIN[w], OUTPUT);
        digitalWrite(MOTOR_DIR_PIN[w], LOW);
        ledcSetup(w, PWM_FREQ_HZ, PWM_BITS);
        ledcAttachPin(MOTOR_PWM_PIN[w], w);
        ledcWrite(w, 0);
    }
    pcnt_isr_service_install(0);
    for (int w = 0; w < 2; ++w) encoder_setup(w);
    analogReadResolution(12);
    for (int i = 0; i < FW_NUM_RANGES; ++i) analogSetPinAttenuation(RANGE_PIN[i], ADC_11db);

    Serial.setRxBufferSize(1024);
    Serial.setTxBufferSize(1024);
    Serial.begin(FW_UART_BAUD);

    static const fw_hal_t hal = {nullptr, hal_motor_set, hal_encoder_read, hal_range_read, hal_micros,
                                 hal_uart_write};
    fw = fw_create(&hal, next_boot_count(), reset_reason_code());  // sends HELLO
    if (fw == nullptr) {
        // out of memory at boot: nothing can be controlled; restart and try again
        delay(1000);
        ESP.restart();
    }
}

void loop() {
    uint8_t buf[128];
    int n = Serial.available();
    while (n > 0) {
        size_t got = Serial.readBytes(buf, n < (int)sizeof buf ? n : (int)sizeof buf);
        fw_rx(fw, buf, got);
        n = Serial.available();
    }
    fw_poll(fw);  // loop() runs at tens of kHz: watchdog, 200 Hz PID and telemetry happen here
}
