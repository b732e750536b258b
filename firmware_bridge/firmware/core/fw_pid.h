/* Per-wheel PID velocity controller with anti-windup (used by fw_core.c). */
#ifndef FW_PID_H
#define FW_PID_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float kp, ki, kd; /* duty/(rad/s), duty/rad, duty/(rad/s^2) */
    float i_limit;    /* |integral term| <= i_limit (duty) */
    float integral;   /* integral term, duty */
    float prev_meas;  /* previous measurement, rad/s (derivative on measurement) */
    int has_prev;
    float output;     /* last output, duty in [-1, 1] */
} fw_pid_t;

/* Zero the state (integral, derivative memory, output); gains are kept. */
void fw_pid_reset(fw_pid_t *pid);

/* One step: target and measured speed in rad/s, dt in seconds (> 0). Returns duty in [-1, 1].
 * Anti-windup: the integral is clamped to +-i_limit and does not grow while the output is
 * saturated in the direction of the error (conditional integration). The derivative acts on
 * the measurement, so a target step gives no derivative kick. */
float fw_pid_step(fw_pid_t *pid, float target, float measured, float dt);

#ifdef __cplusplus
}
#endif

#endif /* FW_PID_H */
