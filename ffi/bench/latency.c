/*
 * latency.c: one-way latency of shmbus through the C API, by ping-pong between two processes.
 *
 *   latency BUS SIZE ITERATIONS
 *
 * The same method as the ring benchmark (shm/benches/ring.rs, one_way_latency/ring_*) and as
 * its Rust twin (latency.rs beside this file): the parent publishes SIZE bytes on a ping
 * topic through a zero-copy loan, writing every byte; the child, subscribed to it, reads every
 * byte and answers with SIZE bytes on a pong topic, written the same way; the parent reads
 * every byte of the answer. Both sides busy-poll (SHMBUS_WAIT_BUSY_SPIN) and are pinned to
 * CPUs 0 and 1. Each round trip is timed on its own (CLOCK_MONOTONIC); a sample is half of
 * it. After a warm-up of ITERATIONS / 10 round trips, ITERATIONS samples are sorted and
 * printed as percentiles:
 *
 *   c SIZE p50 P50_NS p90 P90_NS p99 P99_NS p999 P999_NS max MAX_NS
 */
#define _GNU_SOURCE
#include <shmbus.h>

#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "latency: %s: %s\n", what, shmbus_last_error());
    exit(1);
}

#define TRY(expr)                                                                              \
    do {                                                                                       \
        if ((expr) != SHMBUS_OK) die(#expr);                                                   \
    } while (0)

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set); /* best effort, as in the Rust benchmark */
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Reads every byte, eight at a time, like `shmbus::bench::read_all` in the Rust twin. */
static uint64_t sum(const unsigned char *p, size_t len) {
    uint64_t total = 0;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        total += w;
    }
    for (; i < len; i++) total += p[i];
    return total;
}

/* Loans `len` bytes, fills them with `byte`, commits. */
static void send_filled(shmbus_publisher *pub, size_t len, unsigned char byte) {
    void *buf;
    TRY(shmbus_loan(pub, len, &buf));
    memset(buf, byte, len);
    TRY(shmbus_commit(pub, len));
}

static void connect_pair(const char *bus, const char *in, const char *out, shmbus_client **client,
                         shmbus_subscriber **sub, shmbus_publisher **pub) {
    shmbus_subscriber_options options = {0};
    options.wait = SHMBUS_WAIT_BUSY_SPIN;
    TRY(shmbus_connect(bus, client));
    TRY(shmbus_subscribe_with(*client, in, &options, sub));
    TRY(shmbus_publisher_new(*client, out, pub));
    TRY(shmbus_publisher_set_wait(*pub, SHMBUS_WAIT_BUSY_SPIN, 0));
}

/* The child: echoes every ping with a pong of the same size until an empty ping. */
static void echo(const char *bus, const char *ping, const char *pong, int ready_fd) {
    pin(1);
    shmbus_client *client;
    shmbus_subscriber *sub;
    shmbus_publisher *pub;
    connect_pair(bus, ping, pong, &client, &sub, &pub);
    if (write(ready_fd, "r", 1) != 1) exit(1);
    close(ready_fd);
    shmbus_sample s = {0};
    for (;;) {
        /* Releases the previous ping and receives the next, in one call. */
        TRY(shmbus_recv_next(sub, &s, SHMBUS_WAIT_FOREVER));
        size_t len = s.len;
        unsigned char reply = (unsigned char)sum(s.data, len);
        if (len == 0) break;
        send_filled(pub, len, reply);
    }
    TRY(shmbus_sample_release(&s));
    shmbus_publisher_free(pub);
    shmbus_subscriber_free(sub);
    shmbus_client_free(client);
}

static int compare(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: latency BUS SIZE ITERATIONS\n");
        return 2;
    }
    const char *bus = argv[1];
    size_t size = strtoul(argv[2], NULL, 10);
    long iterations = strtol(argv[3], NULL, 10);
    if (size == 0 || iterations <= 0) {
        fprintf(stderr, "latency: SIZE and ITERATIONS must be positive\n");
        return 2;
    }
    char ping[64], pong[64];
    snprintf(ping, sizeof ping, "bench/c%d/ping", (int)getpid());
    snprintf(pong, sizeof pong, "bench/c%d/pong", (int)getpid());

    /* Fork before anything starts a thread; the child connects on its own. */
    int ready[2];
    if (pipe(ready) != 0) return 1;
    pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) {
        close(ready[0]);
        echo(bus, ping, pong, ready[1]);
        _exit(0);
    }
    close(ready[1]);
    pin(0);
    shmbus_client *client;
    shmbus_subscriber *sub;
    shmbus_publisher *pub;
    connect_pair(bus, pong, ping, &client, &sub, &pub);
    char r;
    if (read(ready[0], &r, 1) != 1) { /* the child subscribed to the pings */
        fprintf(stderr, "latency: the echo process failed\n");
        return 1;
    }

    long warmup = iterations / 10;
    uint64_t *samples = malloc(sizeof *samples * (size_t)iterations);
    if (!samples) return 1;
    volatile uint64_t sink = 0;
    unsigned char n = 0;
    shmbus_sample s = {0};
    for (long i = -warmup; i < iterations; i++) {
        uint64_t t0 = now_ns();
        send_filled(pub, size, ++n);
        TRY(shmbus_recv_next(sub, &s, SHMBUS_WAIT_FOREVER));
        sink += sum(s.data, s.len);
        uint64_t t1 = now_ns();
        if (i >= 0) samples[i] = (t1 - t0) / 2;
    }
    TRY(shmbus_sample_release(&s));
    (void)sink;
    TRY(shmbus_publish(pub, NULL, 0)); /* tells the child to stop */
    int status;
    waitpid(child, &status, 0);

    qsort(samples, (size_t)iterations, sizeof *samples, compare);
#define AT(q) samples[(size_t)((double)(iterations - 1) * (q))]
    printf("c %zu p50 %llu p90 %llu p99 %llu p999 %llu max %llu\n", size,
           (unsigned long long)AT(0.5), (unsigned long long)AT(0.9), (unsigned long long)AT(0.99),
           (unsigned long long)AT(0.999), (unsigned long long)samples[iterations - 1]);
    free(samples);
    shmbus_publisher_free(pub);
    shmbus_subscriber_free(sub);
    shmbus_client_free(client);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
