/* Fuzz of the C frame parser and the core (also built with ASan+UBSan as test_fuzz_asan):
 * random bytes, every single-bit flip, random double flips, every truncation, oversize runs and
 * random garbage before valid frames. Claims: no crash or sanitizer report; no corrupted frame
 * is ever accepted as a message; after garbage the parser is in sync again within one frame
 * (the frame right after the garbage may be lost, the next one never is); motor duties stay
 * finite and within [-1, 1] whatever the core is fed. Deterministic (fixed seeds). */
#include "test_util.h"

static uint32_t g_rng = 0x12345678u;
static uint32_t rnd(void) { /* xorshift32 */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 17;
    g_rng ^= g_rng << 5;
    return g_rng;
}

/* A few real frames to corrupt, covering short and long types. */
static size_t make_frames(uint8_t wires[][FW_MAX_WIRE], size_t lens[]) {
    fw_msg_t m[6];
    size_t i, k;
    memset(m, 0, sizeof m);
    m[0].type = FW_MSG_SET_VEL; m[0].seq = 1; m[0].u.wheels.left = 1.5f; m[0].u.wheels.right = -0.25f;
    m[1].type = FW_MSG_TELEMETRY; m[1].seq = 2; m[1].ack = 9; m[1].u.telemetry.enc_left = 123456;
    m[1].u.telemetry.enc_right = -5; m[1].u.telemetry.speed_left = 3.0f;
    for (k = 0; k < 8; ++k) m[1].u.telemetry.ranges_mm[k] = (uint16_t)(k * 300);
    m[1].u.telemetry.mcu_time_us = 0xDEADBEEF; m[1].u.telemetry.status = 5;
    m[2].type = FW_MSG_ESTOP; m[2].seq = 0x100;
    m[3].type = FW_MSG_CONFIG; m[3].seq = 4; m[3].u.config.telemetry_period_ms = 10;
    m[3].u.config.watchdog_ms = 200; m[3].u.config.max_wheel_speed = 8.0f; m[3].u.config.ticks_per_rev = 1320;
    m[4].type = FW_MSG_PING; m[4].seq = 0; m[4].u.ping.token = 0;
    m[5].type = FW_MSG_HELLO; m[5].seq = 0; m[5].u.hello.protocol_version = 1; m[5].u.hello.boot_count = 7;
    for (i = 0; i < 6; ++i) lens[i] = fw_msg_encode(&m[i], wires[i], FW_MAX_WIRE);
    return 6;
}

/* Sentinel frames A and B sent after each corruption. */
static uint8_t SENT_A[FW_MAX_WIRE], SENT_B[FW_MAX_WIRE];
static size_t LEN_A, LEN_B;

typedef struct {
    int accepted_bad; /* accepted messages that are none of the allowed originals */
    int got_a, got_b, got_orig;
} outcome_t;

/* Feed `buf` to a fresh parser; classify every accepted message by re-encoding it. */
static outcome_t run_stream(const uint8_t *buf, size_t len, const uint8_t *orig, size_t orig_len) {
    fw_parser_t p;
    fw_frame_t f;
    outcome_t o;
    size_t i;
    memset(&o, 0, sizeof o);
    fw_parser_init(&p);
    for (i = 0; i < len; ++i) {
        if (fw_parser_push(&p, buf[i], &f) == FW_PARSE_FRAME) {
            fw_msg_t m;
            uint8_t re[FW_MAX_WIRE];
            size_t n;
            if (fw_frame_to_msg(&f, &m) != FW_ERR_NONE) continue; /* refused at message level */
            n = fw_msg_encode(&m, re, sizeof re);
            if (n == LEN_A && memcmp(re, SENT_A, n) == 0) o.got_a++;
            else if (n == LEN_B && memcmp(re, SENT_B, n) == 0) o.got_b++;
            else if (orig && n == orig_len && memcmp(re, orig, n) == 0) o.got_orig++;
            else o.accepted_bad++;
        }
    }
    return o;
}

static size_t with_sentinels(uint8_t *out, const uint8_t *head, size_t head_len) {
    memcpy(out, head, head_len);
    memcpy(out + head_len, SENT_A, LEN_A);
    memcpy(out + head_len + LEN_A, SENT_B, LEN_B);
    return head_len + LEN_A + LEN_B;
}

static void test_bit_flips(uint8_t wires[][FW_MAX_WIRE], const size_t lens[], size_t nf) {
    uint8_t buf[4096], bad[FW_MAX_WIRE];
    size_t f, byte, n;
    int bit, trials = 0, t;
    for (f = 0; f < nf; ++f) {
        for (byte = 0; byte < lens[f]; ++byte) {
            for (bit = 0; bit < 8; ++bit) {
                outcome_t o;
                memcpy(bad, wires[f], lens[f]);
                bad[byte] ^= (uint8_t)(1u << bit);
                n = with_sentinels(buf, bad, lens[f]);
                o = run_stream(buf, n, NULL, 0);
                CHECK(o.accepted_bad == 0 && o.got_orig == 0, "frame %zu byte %zu bit %d: corrupted frame accepted",
                      f, byte, bit);
                CHECK(o.got_b == 1, "frame %zu byte %zu bit %d: lost sync for more than one frame", f, byte, bit);
                if (byte + 1 < lens[f]) CHECK(o.got_a == 1, "flip inside frame %zu lost the next frame", f);
                trials++;
            }
        }
    }
    /* random double and triple flips */
    for (t = 0; t < 30000; ++t) {
        outcome_t o;
        int k, flips = 2 + (int)(rnd() % 2);
        f = rnd() % nf;
        memcpy(bad, wires[f], lens[f]);
        for (k = 0; k < flips; ++k) bad[rnd() % lens[f]] ^= (uint8_t)(1u << (rnd() % 8));
        if (memcmp(bad, wires[f], lens[f]) == 0) continue;
        n = with_sentinels(buf, bad, lens[f]);
        o = run_stream(buf, n, NULL, 0);
        CHECK(o.accepted_bad == 0 && o.got_orig == 0, "multi-flip trial %d accepted a corrupted frame", t);
        CHECK(o.got_b == 1, "multi-flip trial %d: lost sync", t);
    }
    printf("bit flips: %d single + 30000 multi, none accepted\n", trials);
}

static void test_truncation(uint8_t wires[][FW_MAX_WIRE], const size_t lens[], size_t nf) {
    uint8_t buf[4096];
    size_t f, cut, n;
    for (f = 0; f < nf; ++f) {
        for (cut = 0; cut < lens[f]; ++cut) {
            outcome_t o;
            n = with_sentinels(buf, wires[f], cut); /* delimiter never included */
            o = run_stream(buf, n, NULL, 0);
            CHECK(o.accepted_bad == 0 && o.got_orig == 0, "frame %zu cut at %zu: partial frame accepted", f, cut);
            CHECK(o.got_b == 1, "frame %zu cut at %zu: B lost", f, cut);
            CHECK(o.got_a == (cut == 0 ? 1 : 0), "frame %zu cut at %zu: A %s", f, cut,
                  cut == 0 ? "lost" : "survived merged with a partial frame");
        }
    }
}

static void test_oversize_and_garbage(void) {
    uint8_t buf[8192], head[4096];
    int t, lost_a = 0;
    for (t = 0; t < 3000; ++t) {
        size_t len, i, n;
        outcome_t o;
        fw_parser_t p;
        if (t % 2 == 0) { /* oversize run of non-zero bytes, sometimes closed by a delimiter */
            len = FW_MAX_PACKET + 2 + rnd() % 2000;
            for (i = 0; i < len; ++i) head[i] = (uint8_t)(1 + rnd() % 255);
            if (rnd() % 2) head[len - 1] = 0;
        } else { /* random garbage with zeros */
            len = 1 + rnd() % 300;
            for (i = 0; i < len; ++i) head[i] = (uint8_t)(rnd() % 4 == 0 ? 0 : rnd());
        }
        n = with_sentinels(buf, head, len);
        o = run_stream(buf, n, NULL, 0);
        CHECK(o.accepted_bad == 0, "trial %d: garbage accepted as a message", t);
        CHECK(o.got_b == 1, "trial %d: not in sync one frame after garbage", t);
        if (head[len - 1] == 0) CHECK(o.got_a == 1, "trial %d: A lost although the garbage ended with 0x00", t);
        lost_a += o.got_a == 0;
        if (t % 2 == 0) {
            fw_frame_t f;
            int over = 0;
            fw_parser_init(&p);
            for (i = 0; i < len; ++i) over += fw_parser_push(&p, head[i], &f) == FW_PARSE_OVERSIZE;
            CHECK(over == 1 && p.oversize == 1, "trial %d: oversize run reported %d times", t, over);
        }
    }
    printf("garbage/oversize: 3000 trials, frame right after garbage lost %d times, next frame never\n", lost_a);
}

static void test_random_stream_into_core(void) {
    sim_t s;
    fw_hal_t h;
    fw_core_t *fw;
    uint8_t chunk[512];
    int t;
    long accepted_msgs = 0;
    sim_init(&s);
    h = sim_hal(&s);
    fw = fw_create(&h, 1, 0);
    for (t = 0; t < 4000; ++t) {
        size_t n = 1 + rnd() % sizeof chunk, i;
        int mode = (int)(rnd() % 3);
        for (i = 0; i < n; ++i) {
            uint32_t r = rnd();
            chunk[i] = mode == 0 ? (uint8_t)r : mode == 1 ? (uint8_t)(r % 16) : (uint8_t)(r % 3 == 0 ? 0 : r);
        }
        if (t % 7 == 0) { /* splice in a valid frame now and then (motion commands with wild values) */
            fw_msg_t m = mk((uint8_t)(1 + rnd() % 8), (uint16_t)rnd());
            uint32_t a = rnd(), b = rnd();
            memcpy(&m.u.pid.kp, &a, 4);
            memcpy(&m.u.pid.ki, &b, 4);
            n = fw_msg_encode(&m, chunk, sizeof chunk);
            accepted_msgs++;
        }
        fw_rx(fw, chunk, n);
        sim_run(&s, fw, 1 + (int)(rnd() % 3));
        CHECK(isfinite(s.duty[0]) && isfinite(s.duty[1]) && fabsf(s.duty[0]) <= 1.0f && fabsf(s.duty[1]) <= 1.0f,
              "duty out of range after random input: %g %g", s.duty[0], s.duty[1]);
        CHECK(isfinite(fw_target_speed(fw, 0)) && fabsf(fw_target_speed(fw, 0)) <= fw_param(fw, FW_PARAM_MAX_WHEEL_SPEED),
              "target out of range: %g", fw_target_speed(fw, 0));
    }
    CHECK(s.bad_output == 0 && s.partial_writes == 0, "core output stayed well-formed");
    printf("core fuzz: 4000 chunks (%ld valid frames spliced in), %u frames accepted, %u CRC errors, %u frame errors, %u oversize\n",
           accepted_msgs, fw_counter(fw, FW_CNT_RX_FRAMES), fw_counter(fw, FW_CNT_RX_CRC_ERRORS),
           fw_counter(fw, FW_CNT_RX_FRAME_ERRORS), fw_counter(fw, FW_CNT_RX_OVERSIZE));
    fw_destroy(fw);
}

static void test_cobs_decode_bounds(void) {
    uint8_t in[300], out[64];
    int t;
    for (t = 0; t < 20000; ++t) {
        size_t len = rnd() % sizeof in, i;
        long n;
        for (i = 0; i < len; ++i) in[i] = (uint8_t)rnd();
        n = fw_cobs_decode(in, len, out, sizeof out);
        CHECK(n <= (long)sizeof out, "cobs_decode wrote past its capacity");
    }
}

int main(void) {
    uint8_t wires[6][FW_MAX_WIRE];
    size_t lens[6], nf;
    fw_msg_t a = mk(FW_MSG_SET_VEL, 0xAAAA), b = mk(FW_MSG_PING, 0xBBBB);
    a.u.wheels.left = 0.5f;
    b.u.ping.token = 0xB0B0B0B0u;
    LEN_A = fw_msg_encode(&a, SENT_A, sizeof SENT_A);
    LEN_B = fw_msg_encode(&b, SENT_B, sizeof SENT_B);
    nf = make_frames(wires, lens);
    test_bit_flips(wires, lens, nf);
    test_truncation(wires, lens, nf);
    test_oversize_and_garbage();
    test_random_stream_into_core();
    test_cobs_decode_bounds();
    if (g_failures) {
        fprintf(stderr, "test_fuzz: %d check(s) failed\n", g_failures);
        return 1;
    }
    printf("test_fuzz: OK\n");
    return 0;
}
