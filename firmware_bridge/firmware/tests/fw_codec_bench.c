/* C codec throughput: encode + streaming-decode (byte-at-a-time parser + payload unpack) of
 * SET_VEL and TELEMETRY frames, in frames per CPU-second (best of 5 runs). Prints one JSON
 * object; benchmarks/bench_codec.py runs it.
 * usage: fw_codec_bench [frames_per_type]   (default 2000000) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fw_protocol.h"

/* CPU time of this process: the figure is the codec's cost, not the machine's load. */
static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double bench(fw_msg_t *m, long n, size_t *wire_len, unsigned long *check) {
    uint8_t wire[FW_MAX_WIRE];
    fw_parser_t p;
    fw_frame_t f;
    fw_msg_t out;
    long i;
    double t0, t1;
    fw_parser_init(&p);
    t0 = now_s();
    for (i = 0; i < n; ++i) {
        size_t len, k;
        m->seq = (uint16_t)i;
        len = fw_msg_encode(m, wire, sizeof wire);
        for (k = 0; k < len; ++k) {
            if (fw_parser_push(&p, wire[k], &f) == FW_PARSE_FRAME && fw_frame_to_msg(&f, &out) == FW_ERR_NONE) {
                *check += out.seq; /* keeps the work observable */
            }
        }
        *wire_len = len;
    }
    t1 = now_s();
    if (p.frames_ok != (uint32_t)n) {
        fprintf(stderr, "fw_codec_bench: decoded %u of %ld frames\n", p.frames_ok, n);
        exit(1);
    }
    return (double)n / (t1 - t0);
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 2000000L;
    fw_msg_t sv, te;
    size_t sv_len = 0, te_len = 0;
    unsigned long check = 0;
    double r_sv, r_te;
    int k;
    if (n <= 0) {
        fprintf(stderr, "usage: fw_codec_bench [frames_per_type > 0]\n");
        return 2;
    }
    memset(&sv, 0, sizeof sv);
    sv.type = FW_MSG_SET_VEL;
    sv.u.wheels.left = 1.25f;
    sv.u.wheels.right = -0.75f;
    memset(&te, 0, sizeof te);
    te.type = FW_MSG_TELEMETRY;
    te.u.telemetry.enc_left = 123456;
    te.u.telemetry.enc_right = -65432;
    te.u.telemetry.speed_left = 3.5f;
    te.u.telemetry.speed_right = -2.0f;
    for (k = 0; k < 8; ++k) te.u.telemetry.ranges_mm[k] = (uint16_t)(250 + 100 * k);
    te.u.telemetry.mcu_time_us = 123456789u;
    te.u.telemetry.status = 4;
    r_sv = r_te = 0.0;
    for (k = 0; k < 5; ++k) {
        double a = bench(&sv, n, &sv_len, &check), b = bench(&te, n, &te_len, &check);
        if (a > r_sv) r_sv = a;
        if (b > r_te) r_te = b;
    }
    printf("{\"frames_per_type\": %ld, \"set_vel_frames_per_s\": %.0f, \"telemetry_frames_per_s\": %.0f, "
           "\"set_vel_wire_bytes\": %zu, \"telemetry_wire_bytes\": %zu, \"checksum\": %lu}\n",
           n, r_sv, r_te, sv_len, te_len, check);
    return 0;
}
