#include "fw_pid.h"

static float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

void fw_pid_reset(fw_pid_t *pid) {
    pid->integral = 0.0f;
    pid->prev_meas = 0.0f;
    pid->has_prev = 0;
    pid->output = 0.0f;
}

float fw_pid_step(fw_pid_t *pid, float target, float measured, float dt) {
    float error = target - measured;
    float deriv = pid->has_prev ? -(measured - pid->prev_meas) / dt : 0.0f;
    float unclamped, out, candidate;
    pid->prev_meas = measured;
    pid->has_prev = 1;

    candidate = clampf(pid->integral + pid->ki * error * dt, -pid->i_limit, pid->i_limit);
    unclamped = pid->kp * error + candidate + pid->kd * deriv;
    /* conditional integration: keep the new integral unless it pushes a saturated output
     * further into saturation */
    if ((unclamped > 1.0f && error > 0.0f) || (unclamped < -1.0f && error < 0.0f)) {
        unclamped = pid->kp * error + pid->integral + pid->kd * deriv;
    } else {
        pid->integral = candidate;
    }
    out = clampf(unclamped, -1.0f, 1.0f);
    pid->output = out;
    return out;
}
