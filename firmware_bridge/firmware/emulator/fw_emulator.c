/* fw_emulator: the firmware core on the host, serving the wire protocol on a pseudo-terminal.
 *
 * Prints exactly one line, "PTY <slave path>", to stdout and flushes it; then runs the core at
 * ~1 kHz against two simulated motors (first-order: speed' = (duty * free_speed - speed) / tau)
 * whose encoders count ticks_per_rev per wheel revolution, and constant range readings. Open the
 * printed path with any serial library (baud rate is ignored). SIGTERM/SIGINT: clean exit 0.
 * SIGUSR1: simulated MCU reset (motors stop, core re-created with boot count + 1 and reset reason
 * SOFTWARE, HELLO sent) on the same pty, as a host sees an ESP32 reset without unplugging.
 *
 * Note: pyserial flushes the input buffer when it opens a port, so a HELLO written before the
 * host opened the pty is gone; --boot-delay-ms N delays the boot (and HELLO) by N ms so a test
 * can open the port first.
 *
 * Example:  fw_emulator --boot-count 3 --reset-reason SOFTWARE --ranges-mm 800
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "fw_core.h"

#define TICK_NS 1000000L       /* fw_poll period: 1 ms */
#define MAX_QUEUED_BYTES 3072  /* unread bytes at the slave beyond which whole frames are dropped */

typedef struct {
    int master, slave;
    struct timespec t0;
    float duty[2];
    double speed[2], counts[2];
    double free_speed, tau, ticks_per_rev;
    float ranges_m[FW_NUM_RANGES];
    unsigned long dropped_frames;
} emu_t;

static volatile sig_atomic_t g_stop = 0, g_reset = 0;
static void on_signal(int sig) {
    if (sig == SIGUSR1) g_reset = 1;
    else g_stop = 1;
}

static uint64_t emu_micros(void *ctx) {
    emu_t *e = (emu_t *)ctx;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)(t.tv_sec - e->t0.tv_sec) * 1000000u + (uint64_t)((t.tv_nsec - e->t0.tv_nsec) / 1000) +
           1000u; /* boot at t = 1 ms, like a real MCU that has run its startup code */
}
static void emu_motor_set(void *ctx, int wheel, float duty) {
    emu_t *e = (emu_t *)ctx;
    if (wheel >= 0 && wheel < 2) e->duty[wheel] = duty;
}
static int32_t emu_encoder_read(void *ctx, int wheel) {
    emu_t *e = (emu_t *)ctx;
    return (int32_t)(int64_t)floor(e->counts[wheel]);
}
static float emu_range_read(void *ctx, int index) { return ((emu_t *)ctx)->ranges_m[index]; }
static void emu_uart_write(void *ctx, const uint8_t *buf, size_t len) {
    emu_t *e = (emu_t *)ctx;
    int queued = 0;
    /* a host that is not reading must not get a torn frame: drop whole frames instead */
    if (ioctl(e->slave, FIONREAD, &queued) == 0 && queued + (int)len > MAX_QUEUED_BYTES) {
        e->dropped_frames++;
        return;
    }
    while (len > 0) {
        ssize_t n = write(e->master, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            e->dropped_frames++;
            return;
        }
        buf += n;
        len -= (size_t)n;
    }
}

static void advance_motors(emu_t *e, double dt) {
    int w;
    if (dt <= 0.0) return;
    if (dt > 0.05) dt = 0.05; /* after a stall, do not integrate a huge step */
    for (w = 0; w < 2; ++w) {
        double target = e->duty[w] * e->free_speed;
        double a = 1.0 - exp(-dt / e->tau);
        double prev = e->speed[w];
        e->speed[w] += (target - e->speed[w]) * a;
        e->counts[w] += 0.5 * (prev + e->speed[w]) * dt * e->ticks_per_rev / (2.0 * M_PI);
    }
}

static const char *REASONS[] = {"UNKNOWN", "POWER_ON", "EXTERNAL", "SOFTWARE", "PANIC", "WATCHDOG", "BROWNOUT",
                                "DEEP_SLEEP"};

static void usage(FILE *f) {
    fprintf(f,
            "usage: fw_emulator [--boot-count N] [--reset-reason R] [--ranges-mm V[,V...x8]]\n"
            "                   [--free-speed RAD_S] [--tau S] [--ticks-per-rev N] [--boot-delay-ms N]\n"
            "\n"
            "Runs the firmware core on a pseudo-terminal and prints 'PTY <path>' on stdout.\n"
            "  --boot-count N      boot count reported in HELLO (default 1)\n"
            "  --reset-reason R    UNKNOWN POWER_ON EXTERNAL SOFTWARE PANIC WATCHDOG BROWNOUT\n"
            "                      DEEP_SLEEP or 0..7 (default POWER_ON)\n"
            "  --ranges-mm V       range reading of all 8 sensors in mm, or 8 comma-separated\n"
            "                      values; 65535 = no reading (default 1000)\n"
            "  --free-speed RAD_S  simulated wheel speed at duty 1 (default 15)\n"
            "  --tau S             simulated motor time constant (default 0.08)\n"
            "  --ticks-per-rev N   simulated encoder counts per wheel revolution (default %u)\n"
            "  --boot-delay-ms N   start the firmware (and send HELLO) N ms after printing PTY\n"
            "                      (default 0); pyserial discards what arrived before open()\n"
            "\n"
            "Signals: SIGTERM/SIGINT exit cleanly; SIGUSR1 simulates an MCU reset (boot count + 1,\n"
            "reset reason SOFTWARE, HELLO) on the same pty.\n"
            "\n"
            "example: fw_emulator --boot-count 3 --reset-reason SOFTWARE --ranges-mm 800\n",
            FW_DEFAULT_TICKS_PER_REV);
}

static int parse_double(const char *s, double lo, double hi, double *out) {
    char *end;
    double v;
    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !(v >= lo && v <= hi)) return 0;
    *out = v;
    return 1;
}

static int die(const char *msg, const char *arg) {
    fprintf(stderr, "fw_emulator: error: %s%s%s (see --help)\n", msg, arg ? ": " : "", arg ? arg : "");
    return 2;
}

int main(int argc, char **argv) {
    emu_t e;
    double boot_count = 1, boot_delay_ms = 0, v;
    int reset_reason = FW_RESET_POWER_ON, i;
    fw_hal_t hal;
    fw_core_t *fw;
    struct termios tio;
    struct sigaction sa;
    struct timespec next;
    uint64_t last_us;
    const char *name;

    memset(&e, 0, sizeof e);
    e.free_speed = 15.0;
    e.tau = 0.08;
    e.ticks_per_rev = FW_DEFAULT_TICKS_PER_REV;
    for (i = 0; i < FW_NUM_RANGES; ++i) e.ranges_m[i] = 1.0f;

    for (i = 1; i < argc; ++i) {
        const char *opt = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(opt, "--help") == 0 || strcmp(opt, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (val == NULL) return die("missing value for", opt);
        ++i;
        if (strcmp(opt, "--boot-count") == 0) {
            if (!parse_double(val, 0, 4294967295.0, &boot_count) || boot_count != floor(boot_count))
                return die("--boot-count must be an integer 0..4294967295", val);
        } else if (strcmp(opt, "--reset-reason") == 0) {
            int k, found = -1;
            for (k = 0; k < 8; ++k) {
                if (strcmp(val, REASONS[k]) == 0) found = k;
            }
            if (found < 0 && parse_double(val, 0, 7, &v) && v == floor(v)) found = (int)v;
            if (found < 0) return die("--reset-reason must be a name (POWER_ON, SOFTWARE, ...) or 0..7", val);
            reset_reason = found;
        } else if (strcmp(opt, "--ranges-mm") == 0) {
            char buf[256], *tok, *save = NULL;
            int n = 0;
            double mm[FW_NUM_RANGES];
            if (strlen(val) >= sizeof buf) return die("--ranges-mm value too long", val);
            strcpy(buf, val);
            for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                if (n >= FW_NUM_RANGES || !parse_double(tok, 0, 65535, &mm[n])) {
                    return die("--ranges-mm takes one value or 8 comma-separated values in 0..65535", val);
                }
                ++n;
            }
            if (n != 1 && n != FW_NUM_RANGES) return die("--ranges-mm takes one value or 8 values", val);
            for (n = 0; n < FW_NUM_RANGES; ++n) {
                double x = mm[val[0] && strchr(val, ',') ? n : 0];
                e.ranges_m[n] = x >= 65535.0 ? NAN : (float)(x / 1000.0);
            }
        } else if (strcmp(opt, "--free-speed") == 0) {
            if (!parse_double(val, 0.1, 1000, &e.free_speed)) return die("--free-speed must be in 0.1..1000", val);
        } else if (strcmp(opt, "--tau") == 0) {
            if (!parse_double(val, 0.001, 10, &e.tau)) return die("--tau must be in 0.001..10 s", val);
        } else if (strcmp(opt, "--boot-delay-ms") == 0) {
            if (!parse_double(val, 0, 600000, &boot_delay_ms)) return die("--boot-delay-ms must be 0..600000", val);
        } else if (strcmp(opt, "--ticks-per-rev") == 0) {
            if (!parse_double(val, 1, 65535, &e.ticks_per_rev)) return die("--ticks-per-rev must be 1..65535", val);
        } else {
            return die("unknown option", opt);
        }
    }

    e.master = posix_openpt(O_RDWR | O_NOCTTY);
    if (e.master < 0 || grantpt(e.master) != 0 || unlockpt(e.master) != 0 || (name = ptsname(e.master)) == NULL) {
        fprintf(stderr, "fw_emulator: error: cannot create a pseudo-terminal: %s\n", strerror(errno));
        return 1;
    }
    /* keep one slave fd open ourselves: the master then never sees a hang-up while the host
     * closes and reopens the port, and the raw settings stay in place */
    e.slave = open(name, O_RDWR | O_NOCTTY);
    if (e.slave < 0 || tcgetattr(e.slave, &tio) != 0) {
        fprintf(stderr, "fw_emulator: error: cannot open %s: %s\n", name, strerror(errno));
        return 1;
    }
    cfmakeraw(&tio);
    tcsetattr(e.slave, TCSANOW, &tio);
    fcntl(e.master, F_SETFL, fcntl(e.master, F_GETFL) | O_NONBLOCK);

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    clock_gettime(CLOCK_MONOTONIC, &e.t0);
    hal.ctx = &e;
    hal.motor_set = emu_motor_set;
    hal.encoder_read = emu_encoder_read;
    hal.range_read = emu_range_read;
    hal.micros = emu_micros;
    hal.uart_write = emu_uart_write;

    printf("PTY %s\n", name);
    fflush(stdout);

    if (boot_delay_ms > 0) {
        struct timespec d;
        d.tv_sec = (time_t)(boot_delay_ms / 1000.0);
        d.tv_nsec = (long)((boot_delay_ms - (double)d.tv_sec * 1000.0) * 1e6);
        while (nanosleep(&d, &d) != 0 && errno == EINTR && !g_stop) {
        }
        if (g_stop) return 0;
    }
    fw = fw_create(&hal, (uint32_t)boot_count, (uint8_t)reset_reason);
    if (fw == NULL) {
        fprintf(stderr, "fw_emulator: error: fw_create failed (out of memory)\n");
        return 1;
    }
    last_us = emu_micros(&e);
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (!g_stop) {
        struct pollfd pfd;
        if (g_reset) {
            g_reset = 0;
            fw_destroy(fw);
            e.duty[0] = e.duty[1] = 0.0f;
            boot_count += 1;
            fw = fw_create(&hal, (uint32_t)boot_count, FW_RESET_SOFTWARE);
            if (fw == NULL) {
                fprintf(stderr, "fw_emulator: error: fw_create failed (out of memory)\n");
                return 1;
            }
        }
        struct timespec now, timeout;
        long wait_ns;
        uint64_t now_us;
        pfd.fd = e.master;
        pfd.events = POLLIN;
        pfd.revents = 0;
        clock_gettime(CLOCK_MONOTONIC, &now);
        wait_ns = (next.tv_sec - now.tv_sec) * 1000000000L + (next.tv_nsec - now.tv_nsec);
        if (wait_ns < 0) wait_ns = 0;
        timeout.tv_sec = wait_ns / 1000000000L;
        timeout.tv_nsec = wait_ns % 1000000000L;
        if (ppoll(&pfd, 1, &timeout, NULL) > 0 && (pfd.revents & POLLIN)) {
            uint8_t buf[512];
            ssize_t n;
            while ((n = read(e.master, buf, sizeof buf)) > 0) fw_rx(fw, buf, (size_t)n);
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - next.tv_sec) * 1000000000L + (now.tv_nsec - next.tv_nsec) >= 0) {
            now_us = emu_micros(&e);
            advance_motors(&e, (double)(now_us - last_us) * 1e-6);
            last_us = now_us;
            fw_poll(fw);
            next.tv_nsec += TICK_NS;
            if (next.tv_nsec >= 1000000000L) {
                next.tv_nsec -= 1000000000L;
                next.tv_sec++;
            }
            if ((now.tv_sec - next.tv_sec) * 1000000000L + (now.tv_nsec - next.tv_nsec) > 50 * TICK_NS) next = now;
        }
    }
    fprintf(stderr, "fw_emulator: stopped (%u frames received, %u sent, %lu dropped while the host was not reading)\n",
            fw_counter(fw, FW_CNT_RX_FRAMES), fw_counter(fw, FW_CNT_TX_FRAMES), e.dropped_frames);
    fw_destroy(fw);
    close(e.slave);
    close(e.master);
    return 0;
}
