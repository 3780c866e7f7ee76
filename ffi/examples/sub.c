/*
 * sub.c: print the messages published on topics matching one or more patterns.
 *
 *   sub [-b BUS] [-n COUNT] [-t TIMEOUT_MS] [-H HISTORY] [-l] PATTERN...
 *
 * Prints "subscribed PATTERN" on stderr for each pattern once attached (anything published
 * after that line is delivered), then one line per message on stdout: TOPIC<TAB>PAYLOAD, with
 * tabs, newlines, backslashes and other non-printable bytes escaped. Each message is read in
 * place in shared memory (shmbus_recv) and released right after printing.
 *
 *   -n COUNT       exit 0 after COUNT messages (default: run until SIGINT/SIGTERM)
 *   -t TIMEOUT_MS  exit 4 if the messages have not all arrived within TIMEOUT_MS
 *   -H HISTORY     also deliver up to HISTORY messages already in each ring
 *   -l             lossy: never hold publishers back; report lost messages on stderr
 */
#define _POSIX_C_SOURCE 200809L
#include <shmbus.h>

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One line per message: escape what would break it. */
static void print_escaped(const unsigned char *p, size_t len) {
    for (size_t i = 0; i < len; i++) {
        unsigned char c = p[i];
        if (c == '\\') fputs("\\\\", stdout);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
        else putchar(c);
    }
}

int main(int argc, char **argv) {
    const char *bus = NULL;
    long count = -1, timeout_ms = -1;
    shmbus_subscriber_options options = {0}; /* zero: the defaults (tethered, no history) */
    int opt;
    while ((opt = getopt(argc, argv, "b:n:t:H:l")) != -1) {
        switch (opt) {
        case 'b': bus = optarg; break;
        case 'n': count = strtol(optarg, NULL, 10); break;
        case 't': timeout_ms = strtol(optarg, NULL, 10); break;
        case 'H': options.history = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'l': options.lossy = true; break;
        default: goto usage;
        }
    }
    if (optind >= argc) goto usage;

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);

    shmbus_client *client = NULL;
    shmbus_subscriber *sub = NULL;
    int status = 0, rc;
    if ((rc = shmbus_connect(bus, &client)) != SHMBUS_OK) {
        fprintf(stderr, "sub: %s\n", shmbus_last_error());
        return shmbus_exit_code(rc);
    }
    rc = shmbus_subscribe_all(client, (const char *const *)&argv[optind], (size_t)(argc - optind),
                              &options, &sub);
    if (rc != SHMBUS_OK) {
        fprintf(stderr, "sub: %s\n", shmbus_last_error());
        shmbus_client_free(client);
        return shmbus_exit_code(rc);
    }
    for (int i = optind; i < argc; i++) fprintf(stderr, "subscribed %s\n", argv[i]);

    int64_t deadline = timeout_ms >= 0 ? now_ms() + timeout_ms : -1;
    for (long received = 0; count < 0 || received < count;) {
        if (stop) break;
        /* Wake up at least every 100 ms to notice signals and the deadline. */
        int32_t wait = 100;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left <= 0) {
                fprintf(stderr, "sub: timed out after %ld messages\n", received);
                status = 4;
                break;
            }
            if (left < wait) wait = (int32_t)left;
        }
        shmbus_sample sample;
        rc = shmbus_recv(sub, &sample, wait);
        if (rc == SHMBUS_ERR_TIMEOUT) continue;
        if (rc == SHMBUS_ERR_LAGGED || rc == SHMBUS_ERR_CORRUPT || rc == SHMBUS_ERR_BROKER_GONE) {
            /* Names the topic, or says the broker went (the client reconnects by itself); go on. */
            fprintf(stderr, "sub: %s\n", shmbus_last_error());
            continue;
        }
        if (rc != SHMBUS_OK) {
            fprintf(stderr, "sub: shmbus_recv: %s\n", shmbus_last_error());
            status = 1;
            break;
        }
        fputs(sample.topic, stdout);
        putchar('\t');
        print_escaped(sample.data, sample.len);
        putchar('\n');
        received++;
        if ((rc = shmbus_sample_release(&sample)) != SHMBUS_OK) {
            fprintf(stderr, "sub: shmbus_sample_release: %s\n", shmbus_last_error());
            status = 1;
            break;
        }
    }
    shmbus_subscriber_free(sub);
    shmbus_client_free(client);
    return status;

usage:
    fprintf(stderr, "usage: sub [-b BUS] [-n COUNT] [-t TIMEOUT_MS] [-H HISTORY] [-l] PATTERN...\n");
    return 2;
}
