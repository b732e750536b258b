/* Firmware core behaviour against a fake HAL with simulated motors (test_util.h):
 * HELLO at boot, telemetry period, PID tracking, command watchdog, latched e-stop, PWM mode,
 * parameter validation with NACKs, encoder reset, ranges, RX_ERROR, anti-windup. */
#include "test_util.h"

static fw_core_t *boot(sim_t *s, uint32_t boot_count, uint8_t reason) {
    fw_hal_t h;
    sim_init(s);
    h = sim_hal(s);
    return fw_create(&h, boot_count, reason);
}

static void set_vel(fw_core_t *fw, uint16_t seq, float l, float r) {
    fw_msg_t m = mk(FW_MSG_SET_VEL, seq);
    m.u.wheels.left = l;
    m.u.wheels.right = r;
    send_cmd(fw, &m);
}

/* Run `ms` milliseconds sending SET_VEL every 20 ms (a 50 Hz host). */
static uint16_t drive(sim_t *s, fw_core_t *fw, uint16_t seq, float l, float r, int ms) {
    int t;
    for (t = 0; t < ms; t += 20) {
        set_vel(fw, seq++, l, r);
        sim_run(s, fw, 20);
    }
    return seq;
}

static void test_hello_and_create(void) {
    sim_t s;
    fw_hal_t h;
    fw_core_t *fw = boot(&s, 42, FW_RESET_BROWNOUT);
    CHECK(fw != NULL, "fw_create");
    CHECK(s.num_msgs == 1 && s.msgs[0].type == FW_MSG_HELLO, "first frame is HELLO");
    CHECK(s.msgs[0].seq == 0, "HELLO seq 0");
    CHECK(s.msgs[0].u.hello.boot_count == 42 && s.msgs[0].u.hello.reset_reason == FW_RESET_BROWNOUT &&
              s.msgs[0].u.hello.protocol_version == FW_PROTOCOL_VERSION && s.msgs[0].u.hello.fw_version == FW_VERSION,
          "HELLO fields");
    CHECK(s.duty[0] == 0.0f && s.duty[1] == 0.0f && fw_mode(fw) == FW_MODE_IDLE, "motors idle at boot");
    fw_destroy(fw);
    sim_init(&s);
    h = sim_hal(&s);
    h.uart_write = NULL;
    CHECK(fw_create(&h, 1, 0) == NULL, "fw_create refuses a HAL with a NULL function");
    CHECK(fw_create(NULL, 1, 0) == NULL, "fw_create refuses a NULL HAL");
}

static void test_telemetry_period(void) {
    sim_t s;
    fw_core_t *fw = boot(&s, 1, FW_RESET_POWER_ON);
    int i, n, prev_seq = 0;
    fw_msg_t cfg;
    sim_run(&s, fw, 1000);
    n = count_msgs(&s, FW_MSG_TELEMETRY, 0);
    CHECK(n == 100, "100 TELEMETRY in 1 s at the default 10 ms period, got %d", n);
    for (i = 1; i < s.num_msgs; ++i) {
        CHECK(s.msgs[i].seq == prev_seq + 1, "MCU seq increments by one (%d after %d)", s.msgs[i].seq, prev_seq);
        prev_seq = s.msgs[i].seq;
    }
    i = last_msg(&s, FW_MSG_TELEMETRY, 0);
    CHECK(s.msgs[i].u.telemetry.mcu_time_us == (uint32_t)s.now_us, "mcu_time_us is the HAL clock");
    CHECK(s.msgs[i].u.telemetry.status == 0, "status idle = 0, got 0x%x", s.msgs[i].u.telemetry.status);
    cfg = mk(FW_MSG_CONFIG, 9);
    cfg.u.config.telemetry_period_ms = 50;
    cfg.u.config.watchdog_ms = 200;
    cfg.u.config.max_wheel_speed = 10.0f;
    cfg.u.config.ticks_per_rev = FW_DEFAULT_TICKS_PER_REV;
    send_cmd(fw, &cfg);
    n = s.num_msgs;
    sim_run(&s, fw, 1000);
    CHECK(count_msgs(&s, FW_MSG_TELEMETRY, n) == 20, "20 TELEMETRY in 1 s at 50 ms, got %d",
          count_msgs(&s, FW_MSG_TELEMETRY, n));
    cfg.seq = 10;
    cfg.u.config.telemetry_period_ms = 0;
    send_cmd(fw, &cfg);
    n = s.num_msgs;
    sim_run(&s, fw, 500);
    CHECK(count_msgs(&s, FW_MSG_TELEMETRY, n) == 0, "telemetry_period_ms 0 turns TELEMETRY off");
    CHECK(s.partial_writes == 0 && s.bad_output == 0, "every uart_write is exactly one valid frame");
    fw_destroy(fw);
}

static void test_velocity_tracking(void) {
    sim_t s;
    fw_core_t *fw = boot(&s, 1, FW_RESET_POWER_ON);
    int i;
    uint16_t seq = drive(&s, fw, 100, 6.0f, -3.0f, 1500);
    CHECK(fw_mode(fw) == FW_MODE_VELOCITY, "velocity mode");
    CHECK(fabs(s.speed[0] - 6.0) < 0.3 && fabs(s.speed[1] + 3.0) < 0.3, "plant tracks targets: %.3f %.3f",
          s.speed[0], s.speed[1]);
    CHECK(fabsf(fw_measured_speed(fw, 0) - 6.0f) < 0.4f && fabsf(fw_measured_speed(fw, 1) + 3.0f) < 0.4f,
          "speed estimate from counts: %.3f %.3f", fw_measured_speed(fw, 0), fw_measured_speed(fw, 1));
    i = last_msg(&s, FW_MSG_TELEMETRY, 0);
    CHECK(s.msgs[i].u.telemetry.status == FW_STATUS_MOTORS_ENABLED, "status MOTORS_ENABLED only, got 0x%x",
          s.msgs[i].u.telemetry.status);
    CHECK(s.msgs[i].u.telemetry.last_cmd_seq == (uint16_t)(seq - 1), "last_cmd_seq = last SET_VEL seq");
    CHECK(s.msgs[i].u.telemetry.enc_left > 0 && s.msgs[i].u.telemetry.enc_right < 0, "encoder signs");
    CHECK(s.msgs[i].u.telemetry.enc_left == fw_encoder_count(fw, 0) ||
              abs(s.msgs[i].u.telemetry.enc_left - fw_encoder_count(fw, 0)) < 50,
          "telemetry counts follow the encoder");
    CHECK(count_msgs(&s, FW_MSG_ACK, 0) == 0 && count_msgs(&s, FW_MSG_NACK, 0) == 0, "SET_VEL is not acked");
    /* clamp to max_wheel_speed */
    set_vel(fw, seq, 50.0f, -50.0f);
    CHECK(fw_target_speed(fw, 0) == 10.0f && fw_target_speed(fw, 1) == -10.0f, "targets clamped to +-10");
    fw_destroy(fw);
}

static void test_watchdog(void) {
    sim_t s;
    fw_core_t *fw = boot(&s, 1, FW_RESET_POWER_ON);
    int i;
    uint16_t seq;
    sim_run(&s, fw, 500);
    CHECK(!(fw_status(fw) & FW_STATUS_WATCHDOG_TRIPPED), "no trip while idle at boot");
    seq = drive(&s, fw, 1, 4.0f, 4.0f, 500);
    /* last SET_VEL was 20 ms ago (drive ends with a 20 ms run) */
    sim_run(&s, fw, 180);
    CHECK(fw_mode(fw) == FW_MODE_VELOCITY && s.duty[0] != 0.0f, "still driving 200 ms after the last SET_VEL");
    sim_run(&s, fw, 1);
    CHECK(fw_mode(fw) == FW_MODE_IDLE && s.duty[0] == 0.0f && s.duty[1] == 0.0f,
          "motors zeroed 201 ms after the last SET_VEL");
    CHECK(fw_status(fw) & FW_STATUS_WATCHDOG_TRIPPED, "WATCHDOG_TRIPPED set");
    CHECK(fw_counter(fw, FW_CNT_WATCHDOG_TRIPS) == 1, "trip counted");
    /* pings do not feed the watchdog nor clear the trip */
    {
        fw_msg_t p = mk(FW_MSG_PING, seq++);
        send_cmd(fw, &p);
    }
    sim_run(&s, fw, 50);
    CHECK((fw_status(fw) & FW_STATUS_WATCHDOG_TRIPPED) && s.duty[0] == 0.0f, "PING does not clear the trip");
    i = last_msg(&s, FW_MSG_TELEMETRY, 0);
    CHECK(s.msgs[i].u.telemetry.status & FW_STATUS_WATCHDOG_TRIPPED, "TELEMETRY shows WATCHDOG_TRIPPED");
    CHECK(!(s.msgs[i].u.telemetry.status & FW_STATUS_MOTORS_ENABLED), "TELEMETRY shows motors disabled");
    set_vel(fw, seq++, 4.0f, 4.0f);
    CHECK(!(fw_status(fw) & FW_STATUS_WATCHDOG_TRIPPED) && fw_mode(fw) == FW_MODE_VELOCITY,
          "next SET_VEL clears the trip");
    sim_run(&s, fw, 10);
    CHECK(s.duty[0] > 0.0f, "driving again");
    fw_destroy(fw);
}

static void test_estop(void) {
    sim_t s;
    fw_core_t *fw = boot(&s, 1, FW_RESET_POWER_ON);
    fw_msg_t m;
    int n, a;
    uint16_t seq = drive(&s, fw, 1, 5.0f, 5.0f, 300);
    CHECK(s.duty[0] > 0.0f, "driving before ESTOP");
    m = mk(FW_MSG_ESTOP, seq++);
    n = s.num_msgs;
    send_cmd(fw, &m);
    CHECK(s.duty[0] == 0.0f && s.duty[1] == 0.0f, "ESTOP zeroes the motors at once (before fw_poll)");
    a = last_msg(&s, FW_MSG_ACK, n);
    CHECK(a >= 0 && s.msgs[a].u.ack.acked_seq == m.seq && s.msgs[a].u.ack.acked_type == FW_MSG_ESTOP, "ESTOP acked");
    seq = drive(&s, fw, seq, 5.0f, 5.0f, 300);
    CHECK(s.duty[0] == 0.0f && s.duty[1] == 0.0f && fabs(s.speed[0]) < 0.2, "SET_VEL ignored while latched");
    CHECK(fw_counter(fw, FW_CNT_IGNORED_WHILE_ESTOP) == 15, "15 ignored SET_VEL counted, got %u",
          fw_counter(fw, FW_CNT_IGNORED_WHILE_ESTOP));
    CHECK(fw_status(fw) & FW_STATUS_ESTOP_LATCHED, "ESTOP_LATCHED");
    m = mk(FW_MSG_SET_PWM, seq++);
    m.u.wheels.left = 0.5f;
    n = s.num_msgs;
    send_cmd(fw, &m);
    a = last_msg(&s, FW_MSG_NACK, n);
    CHECK(a >= 0 && s.msgs[a].u.ack.error == FW_ERR_ESTOP_LATCHED && s.msgs[a].u.ack.acked_seq == m.seq,
          "SET_PWM while latched -> NACK ESTOP_LATCHED");
    m = mk(FW_MSG_CLEAR_ESTOP, seq++);
    n = s.num_msgs;
    send_cmd(fw, &m);
    CHECK(last_msg(&s, FW_MSG_ACK, n) >= 0, "CLEAR_ESTOP acked");
    sim_run(&s, fw, 50);
    CHECK(s.duty[0] == 0.0f && fw_mode(fw) == FW_MODE_IDLE, "still stopped after CLEAR_ESTOP until a command");
    CHECK(!(fw_status(fw) & FW_STATUS_ESTOP_LATCHED), "latch released");
    seq = drive(&s, fw, seq, 5.0f, 5.0f, 100);
    CHECK(s.duty[0] > 0.0f, "SET_VEL works after CLEAR_ESTOP");
    fw_destroy(fw);
}

static void test_pwm_mode(void) {
    sim_t s;
    fw_core_t *fw = boot(&s, 1, FW_RESET_POWER_ON);
    fw_msg_t m = mk(FW_MSG_SET_PWM, 5);
    int n = s.num_msgs;
    m.u.wheels.left = 0.25f;
    m.u.wheels.right = -2.0f;
    send_cmd(fw, &m);
    CHECK(last_msg(&s, FW_MSG_ACK, n) >= 0, "SET_PWM acked");
    sim_run(&s, fw, 6);
    CHECK(s.duty[0] == 0.25f && s.duty[1] == -1.0f, "duty applied and clamped: %g %g", s.duty[0], s.duty[1]);
    CHECK((fw_status(fw) & (FW_STATUS_PWM_MODE | FW_STATUS_MOTORS_ENABLED)) ==
              (FW_STATUS_PWM_MODE | FW_STATUS_MOTORS_ENABLED), "PWM_MODE | MOTORS_ENABLED");
    sim_run(&s, fw, 250);
    CHECK(s.duty[0] == 0.0f && (fw_status(fw) & FW_STATUS_WATCHDOG_TRIPPED), "watchdog also guards PWM mode");
    m.seq = 6;
    m.u.wheels.left = NAN;
    n = s.num_msgs;
    send_cmd(fw, &m);
    CHECK(last_msg(&s, FW_MSG_NACK, n) >= 0 && s.msgs[last_msg(&s, FW_MSG_NACK, n)].u.ack.error == FW_ERR_BAD_VALUE,
          "NaN duty -> NACK BAD_VALUE");
    fw_destroy(fw);
}

static void test_validation_and_nacks(void) {
    sim_t s;
    fw_core_t *fw = boot(&s, 1, FW_RESET_POWER_ON);
    fw_msg_t m;
    int n, k;
    /* SET_PID */
    m = mk(FW_MSG_SET_PID, 1);
    m.u.pid.kp = -1.0f;
    m.u.pid.ki = 0.1f;
    n = s.num_msgs;
    send_cmd(fw, &m);
    k = last_msg(&s, FW_MSG_NACK, n);
    CHECK(k >= 0 && s.msgs[k].u.ack.error == FW_ERR_BAD_VALUE, "negative kp -> NACK BAD_VALUE");
    CHECK(fw_param(fw, FW_PARAM_KP) == FW_DEFAULT_KP, "kp unchanged after NACK");
    m.seq = 2;
    m.u.pid.kp = 0.1f;
    m.u.pid.ki = 0.2f;
    m.u.pid.kd = 0.01f;
    m.u.pid.i_limit = 0.5f;
    send_cmd(fw, &m);
    CHECK(fw_param(fw, FW_PARAM_KP) == 0.1f && fw_param(fw, FW_PARAM_KI) == 0.2f && fw_param(fw, FW_PARAM_KD) == 0.01f &&
              fw_param(fw, FW_PARAM_I_LIMIT) == 0.5f, "SET_PID applied");
    CHECK(fw_last_cmd_seq(fw) == 2, "last_cmd_seq after SET_PID");
    /* CONFIG */
    m = mk(FW_MSG_CONFIG, 3);
    m.u.config.telemetry_period_ms = 10;
    m.u.config.watchdog_ms = 5;
    m.u.config.max_wheel_speed = 5.0f;
    m.u.config.ticks_per_rev = 100;
    n = s.num_msgs;
    send_cmd(fw, &m);
    k = last_msg(&s, FW_MSG_NACK, n);
    CHECK(k >= 0 && s.msgs[k].u.ack.error == FW_ERR_BAD_VALUE && s.msgs[k].u.ack.acked_type == FW_MSG_CONFIG,
          "watchdog_ms 5 -> NACK");
    CHECK(fw_param(fw, FW_PARAM_WATCHDOG_MS) == 200.0f, "config unchanged after NACK");
    m.seq = 4;
    m.u.config.watchdog_ms = 300;
    m.u.config.max_wheel_speed = 0.0f;
    send_cmd(fw, &m);
    CHECK(fw_param(fw, FW_PARAM_MAX_WHEEL_SPEED) == 10.0f, "max_wheel_speed 0 refused");
    m.seq = 5;
    m.u.config.max_wheel_speed = 5.0f;
    n = s.num_msgs;
    send_cmd(fw, &m);
    CHECK(last_msg(&s, FW_MSG_ACK, n) >= 0 && fw_param(fw, FW_PARAM_WATCHDOG_MS) == 300.0f &&
              fw_param(fw, FW_PARAM_MAX_WHEEL_SPEED) == 5.0f && fw_param(fw, FW_PARAM_TICKS_PER_REV) == 100.0f,
          "valid CONFIG applied and acked");
    /* non-finite SET_VEL is refused (the only SET_VEL reply) */
    m = mk(FW_MSG_SET_VEL, 6);
    m.u.wheels.left = INFINITY;
    n = s.num_msgs;
    send_cmd(fw, &m);
    k = last_msg(&s, FW_MSG_NACK, n);
    CHECK(k >= 0 && s.msgs[k].u.ack.error == FW_ERR_BAD_VALUE && fw_mode(fw) == FW_MODE_IDLE, "inf SET_VEL -> NACK");
    /* MCU->host type sent to the MCU */
    m = mk(FW_MSG_ACK, 7);
    n = s.num_msgs;
    send_cmd(fw, &m);
    k = last_msg(&s, FW_MSG_NACK, n);
    CHECK(k >= 0 && s.msgs[k].u.ack.error == FW_ERR_UNKNOWN_TYPE && s.msgs[k].u.ack.acked_type == FW_MSG_ACK,
          "ACK sent to the MCU -> NACK UNKNOWN_TYPE");
    /* PING */
    m = mk(FW_MSG_PING, 0xBEEF);
    m.u.ping.token = 77;
    n = s.num_msgs;
    send_cmd(fw, &m);
    k = last_msg(&s, FW_MSG_ACK, n);
    CHECK(k == n && s.msgs[k].u.ack.acked_seq == 0xBEEF && s.msgs[k].u.ack.acked_type == FW_MSG_PING,
          "PING -> immediate ACK with its seq");
    CHECK(s.msgs[k].ack == 0xBEEF, "MCU header ack = last host seq received");
    fw_destroy(fw);
}

static void test_encoders_and_ranges(void) {
    sim_t s;
    fw_core_t *fw = boot(&s, 1, FW_RESET_POWER_ON);
    fw_msg_t m;
    int k;
    s.counts_f[0] = 5000.0;
    s.counts_f[1] = -700.0;
    CHECK(fw_encoder_count(fw, 0) == 5000 && fw_encoder_count(fw, 1) == -700, "counts pass through");
    m = mk(FW_MSG_RESET_ENC, 1);
    send_cmd(fw, &m);
    CHECK(fw_encoder_count(fw, 0) == 0 && fw_encoder_count(fw, 1) == 0, "RESET_ENC zeroes the counts");
    s.counts_f[0] += 10.0;
    CHECK(fw_encoder_count(fw, 0) == 10, "counts continue from 0");
    /* int32 wrap of the hardware counter does not disturb the reported delta */
    s.counts_bias[0] = INT32_MAX - 5000;
    send_cmd(fw, &m);
    s.counts_f[0] += 20.0;
    CHECK(fw_encoder_count(fw, 0) == 20, "count across the int32 wrap: %d", fw_encoder_count(fw, 0));
    s.ranges[0] = 1.234f;
    s.ranges[1] = NAN;
    s.ranges[2] = 1000.0f;
    s.ranges[3] = -1.0f;
    s.ranges[4] = 0.0f;
    s.ranges[5] = INFINITY;
    sim_run(&s, fw, 10);
    k = last_msg(&s, FW_MSG_TELEMETRY, 0);
    CHECK(k >= 0, "telemetry");
    CHECK(s.msgs[k].u.telemetry.ranges_mm[0] == 1234, "1.234 m -> 1234 mm, got %u", s.msgs[k].u.telemetry.ranges_mm[0]);
    CHECK(s.msgs[k].u.telemetry.ranges_mm[1] == 0xFFFF, "NaN -> no reading");
    CHECK(s.msgs[k].u.telemetry.ranges_mm[2] == 65534, "far -> clamped 65534");
    CHECK(s.msgs[k].u.telemetry.ranges_mm[3] == 0xFFFF, "negative -> no reading");
    CHECK(s.msgs[k].u.telemetry.ranges_mm[4] == 0, "0 m -> 0 mm");
    CHECK(s.msgs[k].u.telemetry.ranges_mm[5] == 0xFFFF, "inf -> no reading");
    fw_destroy(fw);
}

static void test_rx_error_bit(void) {
    sim_t s;
    fw_core_t *fw = boot(&s, 1, FW_RESET_POWER_ON);
    static const uint8_t garbage[] = {0x05, 0x11, 0x22, 0x33, 0x44, 0x00};
    int k;
    fw_rx(fw, garbage, sizeof garbage);
    CHECK(fw_counter(fw, FW_CNT_RX_CRC_ERRORS) + fw_counter(fw, FW_CNT_RX_FRAME_ERRORS) == 1, "garbage counted");
    sim_run(&s, fw, 10);
    k = last_msg(&s, FW_MSG_TELEMETRY, 0);
    CHECK(s.msgs[k].u.telemetry.status & FW_STATUS_RX_ERROR, "RX_ERROR in the next TELEMETRY");
    sim_run(&s, fw, 10);
    k = last_msg(&s, FW_MSG_TELEMETRY, 0);
    CHECK(!(s.msgs[k].u.telemetry.status & FW_STATUS_RX_ERROR), "RX_ERROR cleared after being reported");
    fw_destroy(fw);
}

static void test_anti_windup(void) {
    sim_t s;
    fw_core_t *fw = boot(&s, 1, FW_RESET_POWER_ON);
    fw_msg_t m = mk(FW_MSG_SET_PID, 1);
    int t;
    uint16_t seq;
    m.u.pid.kp = 0.05f;
    m.u.pid.ki = 0.5f;
    m.u.pid.kd = 0.0f;
    m.u.pid.i_limit = 1.0f;
    send_cmd(fw, &m);
    s.free_speed = 5.0; /* the motor cannot reach 9 rad/s: output saturates */
    seq = drive(&s, fw, 2, 9.0f, 9.0f, 2000);
    CHECK(s.duty[0] > 0.99f, "saturated at duty 1, got %g", s.duty[0]);
    /* conditional integration stops the integral where P + I reaches 1 (about 1 - 0.05 * 4 = 0.8);
     * clamping to i_limit alone would let it reach 1.0 */
    CHECK(fw_pid_integral(fw, 0) < 0.85f, "integral stopped growing at saturation: %g", fw_pid_integral(fw, 0));
    /* drop the target to 2 rad/s: an integrator wound up over 2 s (0.5 * 4 rad/s * 2 s = 4 duty)
     * would hold full duty for seconds; bounded, the wheel is below 2.5 rad/s within 0.5 s */
    for (t = 0; t < 50; ++t) {
        set_vel(fw, seq++, 2.0f, 2.0f);
        sim_run(&s, fw, 20);
        if (s.speed[0] < 2.5) break;
    }
    CHECK(t * 20 <= 500, "below 2.5 rad/s %d ms after the target drop", t * 20);
    for (t = 0; t < 50; ++t) {
        set_vel(fw, seq++, 2.0f, 2.0f);
        sim_run(&s, fw, 20);
    }
    CHECK(fabs(s.speed[0] - 2.0) < 0.2, "settles at 2 rad/s: %g", s.speed[0]);
    /* i_limit bounds the integral term */
    m.seq = seq++;
    m.u.pid.i_limit = 0.3f;
    send_cmd(fw, &m);
    seq = drive(&s, fw, seq, 9.0f, 9.0f, 1000);
    CHECK(fw_pid_integral(fw, 0) <= 0.3f + 1e-6f && fw_pid_integral(fw, 0) > 0.29f, "integral clamped to i_limit: %g",
          fw_pid_integral(fw, 0));
    fw_destroy(fw);
}

int main(void) {
    test_hello_and_create();
    test_telemetry_period();
    test_velocity_tracking();
    test_watchdog();
    test_estop();
    test_pwm_mode();
    test_validation_and_nacks();
    test_encoders_and_ranges();
    test_rx_error_bit();
    test_anti_windup();
    if (g_failures) {
        fprintf(stderr, "test_core: %d check(s) failed\n", g_failures);
        return 1;
    }
    printf("test_core: OK\n");
    return 0;
}
