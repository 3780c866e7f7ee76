/*
 * peer.c: C test program for the shmbus C API, run by ffi/tests/c_api.rs against a real broker.
 *
 *   peer errors BUS DIR     every error path; DIR is an empty private directory
 *   peer zerocopy BUS       loan/commit/abort write in the ring; recv reads in shared memory
 *   peer lossy BUS TOPIC    a lossy subscriber: prints "subscribed", waits for a line on stdin
 *                           (meanwhile the test overruns it), then expects SHMBUS_ERR_LAGGED
 *   peer gone BUS           prints "ready", waits for a line on stdin (meanwhile the test stops
 *                           the broker), then checks what still works and what fails
 *   peer reqrep BUS         the error paths of request/response
 *
 * Prints "ok NAME" for each check group that passed; on the first failure prints what failed
 * (with shmbus_last_error()) on stderr and exits 1.
 */
#define _POSIX_C_SOURCE 200809L
#include <shmbus.h>

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void failed(int line, const char *what, const char *detail) {
    fprintf(stderr, "peer.c:%d: %s%s; last error: %s\n", line, what, detail, shmbus_last_error());
    exit(1);
}

static void check_rc(int line, const char *expr, int got, int want) {
    if (got != want) {
        char detail[256];
        snprintf(detail, sizeof detail, " returned %d (%s), expected %d (%s)", got,
                 shmbus_strerror(got), want, shmbus_strerror(want));
        failed(line, expr, detail);
    }
}

#define EXPECT(expr, want) check_rc(__LINE__, #expr, (expr), (want))
#define OK(expr) EXPECT(expr, SHMBUS_OK)
#define REQUIRE(cond)                                                                          \
    do {                                                                                       \
        if (!(cond)) failed(__LINE__, #cond, " is false");                                     \
    } while (0)
/* The last error names what was wrong. */
#define ERROR_MENTIONS(text) REQUIRE(strstr(shmbus_last_error(), (text)) != NULL)

static void ok(const char *name) {
    printf("ok %s\n", name);
    fflush(stdout);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void wait_for_line(void) {
    char line[64];
    REQUIRE(fgets(line, sizeof line, stdin) != NULL);
}

/* Drains a subscriber: receives and releases until nothing is left. */
static int drain(shmbus_subscriber *sub) {
    int n = 0;
    shmbus_sample s;
    while (shmbus_recv(sub, &s, SHMBUS_NO_WAIT) == SHMBUS_OK) {
        OK(shmbus_sample_release(&s));
        n++;
    }
    return n;
}

static void null_arguments(const char *bus, shmbus_client *client) {
    shmbus_publisher *pub = (shmbus_publisher *)1;
    shmbus_subscriber *sub = (shmbus_subscriber *)1;
    shmbus_sample s;
    void *buf = (void *)1;
    const char *text;
    size_t size;
    bool flag;
    uint32_t id;
    uint64_t u64;

    EXPECT(shmbus_connect(bus, NULL), SHMBUS_ERR_NULL);
    ERROR_MENTIONS("shmbus_connect: client_out is NULL");
    EXPECT(shmbus_connect_embedded(NULL), SHMBUS_ERR_NULL);
    EXPECT(shmbus_publisher_new(NULL, "t", &pub), SHMBUS_ERR_NULL);
    ERROR_MENTIONS("shmbus_publisher_new: client is NULL");
    REQUIRE(pub == NULL); /* outputs are NULL after a failure */
    EXPECT(shmbus_publisher_new(client, NULL, &pub), SHMBUS_ERR_NULL);
    ERROR_MENTIONS("topic is NULL");
    EXPECT(shmbus_publisher_new(client, "t", NULL), SHMBUS_ERR_NULL);
    EXPECT(shmbus_subscribe(NULL, "t", &sub), SHMBUS_ERR_NULL);
    REQUIRE(sub == NULL);
    EXPECT(shmbus_subscribe(client, NULL, &sub), SHMBUS_ERR_NULL);
    EXPECT(shmbus_subscribe(client, "t", NULL), SHMBUS_ERR_NULL);
    EXPECT(shmbus_subscribe_with(client, "t", NULL, NULL), SHMBUS_ERR_NULL);
    EXPECT(shmbus_subscribe_all(client, NULL, 2, NULL, &sub), SHMBUS_ERR_NULL);
    const char *with_null[] = {"a", NULL};
    EXPECT(shmbus_subscribe_all(client, with_null, 2, NULL, &sub), SHMBUS_ERR_NULL);
    ERROR_MENTIONS("patterns[1] is NULL");

    EXPECT(shmbus_publish(NULL, "x", 1), SHMBUS_ERR_NULL);
    ERROR_MENTIONS("shmbus_publish: publisher is NULL");
    EXPECT(shmbus_publish_timeout(NULL, "x", 1, 0), SHMBUS_ERR_NULL);
    EXPECT(shmbus_try_publish(NULL, "x", 1), SHMBUS_ERR_NULL);
    EXPECT(shmbus_loan(NULL, 1, &buf), SHMBUS_ERR_NULL);
    REQUIRE(buf == NULL);
    EXPECT(shmbus_loan_timeout(NULL, 1, 0, &buf), SHMBUS_ERR_NULL);
    EXPECT(shmbus_try_loan(NULL, 1, &buf), SHMBUS_ERR_NULL);
    EXPECT(shmbus_commit(NULL, 0), SHMBUS_ERR_NULL);
    EXPECT(shmbus_abort(NULL), SHMBUS_ERR_NULL);
    EXPECT(shmbus_publisher_id(NULL, &id), SHMBUS_ERR_NULL);
    EXPECT(shmbus_publisher_max_payload(NULL, &size), SHMBUS_ERR_NULL);
    EXPECT(shmbus_publisher_last_sequence(NULL, &u64), SHMBUS_ERR_NULL);
    EXPECT(shmbus_publisher_set_wait(NULL, SHMBUS_WAIT_PARK, 0), SHMBUS_ERR_NULL);
    EXPECT(shmbus_recv(NULL, &s, 0), SHMBUS_ERR_NULL);
    EXPECT(shmbus_sample_release(NULL), SHMBUS_ERR_NULL);
    EXPECT(shmbus_subscriber_add_pattern(NULL, "t"), SHMBUS_ERR_NULL);
    EXPECT(shmbus_subscriber_lagged(NULL, &u64), SHMBUS_ERR_NULL);
    EXPECT(shmbus_client_address(NULL, &text), SHMBUS_ERR_NULL);
    EXPECT(shmbus_client_address(client, NULL), SHMBUS_ERR_NULL);
    EXPECT(shmbus_client_is_connected(NULL, &flag), SHMBUS_ERR_NULL);
    EXPECT(shmbus_client_max_payload(NULL, &size), SHMBUS_ERR_NULL);

    /* With real handles, NULL outputs and data. */
    OK(shmbus_publisher_new(client, "errors/null", &pub));
    OK(shmbus_subscribe(client, "errors/null", &sub));
    EXPECT(shmbus_publish(pub, NULL, 1), SHMBUS_ERR_NULL);
    ERROR_MENTIONS("data is NULL");
    OK(shmbus_publish(pub, NULL, 0)); /* an empty message needs no data */
    EXPECT(shmbus_loan(pub, 1, NULL), SHMBUS_ERR_NULL);
    EXPECT(shmbus_recv(sub, NULL, 0), SHMBUS_ERR_NULL);
    EXPECT(shmbus_publisher_id(pub, NULL), SHMBUS_ERR_NULL);
    EXPECT(shmbus_subscriber_add_pattern(sub, NULL), SHMBUS_ERR_NULL);
    OK(shmbus_recv(sub, &s, 1000));
    REQUIRE(s.len == 0 && s.topic != NULL && strcmp(s.topic, "errors/null") == 0);
    OK(shmbus_sample_release(&s));

    /* Freeing NULL does nothing. */
    shmbus_client_free(NULL);
    shmbus_publisher_free(NULL);
    shmbus_subscriber_free(NULL);
    shmbus_publisher_free(pub);
    shmbus_subscriber_free(sub);
    ok("null-arguments");
}

static void invalid_topics(shmbus_client *client) {
    char too_long[300];
    memset(too_long, 'a', 256);
    too_long[256] = '\0';
    const char *bad[] = {"", "a//b", "a/", "/a", "a*", "***", "a b", "caf\xc3\xa9", "\xff", too_long};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        shmbus_publisher *pub = (shmbus_publisher *)1;
        shmbus_subscriber *sub = (shmbus_subscriber *)1;
        EXPECT(shmbus_publisher_new(client, bad[i], &pub), SHMBUS_ERR_INVALID_TOPIC);
        REQUIRE(pub == NULL);
        EXPECT(shmbus_subscribe(client, bad[i], &sub), SHMBUS_ERR_INVALID_TOPIC);
        REQUIRE(sub == NULL);
    }
    shmbus_publisher *pub;
    EXPECT(shmbus_publisher_new(client, "a//b", &pub), SHMBUS_ERR_INVALID_TOPIC);
    ERROR_MENTIONS("invalid topic \"a//b\": empty fragment at position 2");
    shmbus_subscriber *sub;
    OK(shmbus_subscribe(client, "errors/fine/**", &sub));
    EXPECT(shmbus_subscriber_add_pattern(sub, "x/**y"), SHMBUS_ERR_INVALID_TOPIC);
    ERROR_MENTIONS("x/**y");
    const char *mixed[] = {"errors/ok", "bad topic"};
    shmbus_subscriber *other = (shmbus_subscriber *)1;
    EXPECT(shmbus_subscribe_all(client, mixed, 2, NULL, &other), SHMBUS_ERR_INVALID_TOPIC);
    REQUIRE(other == NULL);
    shmbus_subscriber_free(sub);
    ok("invalid-topic");
}

static void addresses(const char *bus, const char *dir, shmbus_client *client) {
    shmbus_client *c = (shmbus_client *)1;
    EXPECT(shmbus_connect("bad name!", &c), SHMBUS_ERR_INVALID_ADDRESS);
    REQUIRE(c == NULL);
    ERROR_MENTIONS("bad name!");
    EXPECT(shmbus_connect("", &c), SHMBUS_ERR_INVALID_ADDRESS);
    EXPECT(shmbus_connect("ftp://host:1", &c), SHMBUS_ERR_INVALID_ADDRESS);
    EXPECT(shmbus_connect("tcp://127.0.0.1:9", &c), SHMBUS_ERR_UNREACHABLE);

    char nobody[4096];
    snprintf(nobody, sizeof nobody, "%s/nobody.sock", dir);
    EXPECT(shmbus_connect(nobody, &c), SHMBUS_ERR_UNREACHABLE);
    REQUIRE(c == NULL);
    ERROR_MENTIONS(nobody);

    const char *address;
    OK(shmbus_client_address(client, &address));
    REQUIRE(strcmp(address, bus) == 0);
    bool connected = false;
    OK(shmbus_client_is_connected(client, &connected));
    REQUIRE(connected);
    size_t max = 0;
    OK(shmbus_client_max_payload(client, &max));
    REQUIRE(max >= 1024);
    ok("addresses");
}

static void invalid_arguments(shmbus_client *client) {
    shmbus_subscriber_options options = {0};
    options.wait = 99;
    shmbus_subscriber *sub = (shmbus_subscriber *)1;
    EXPECT(shmbus_subscribe_with(client, "errors/args", &options, &sub), SHMBUS_ERR_INVALID_ARGUMENT);
    REQUIRE(sub == NULL);
    ERROR_MENTIONS("unknown wait strategy 99");
    shmbus_publisher *pub;
    OK(shmbus_publisher_new(client, "errors/args", &pub));
    EXPECT(shmbus_publisher_set_wait(pub, 7, 0), SHMBUS_ERR_INVALID_ARGUMENT);
    OK(shmbus_publisher_set_wait(pub, SHMBUS_WAIT_SPIN_THEN_PARK, 10));
    OK(shmbus_publisher_set_wait(pub, SHMBUS_WAIT_BUSY_SPIN, 0));
    shmbus_publisher_free(pub);
    ok("invalid-argument");
}

static void too_large(shmbus_client *client) {
    shmbus_publisher *pub;
    OK(shmbus_publisher_new(client, "errors/large", &pub));
    size_t max = 0;
    OK(shmbus_publisher_max_payload(pub, &max));
    REQUIRE(max > 0);
    char *big = calloc(1, max + 1);
    REQUIRE(big != NULL);
    EXPECT(shmbus_publish(pub, big, max + 1), SHMBUS_ERR_TOO_LARGE);
    char sizes[64];
    snprintf(sizes, sizeof sizes, "payload of %zu bytes exceeds the limit of %zu bytes", max + 1, max);
    ERROR_MENTIONS(sizes);
    ERROR_MENTIONS("errors/large");
    EXPECT(shmbus_try_publish(pub, big, max + 1), SHMBUS_ERR_TOO_LARGE);
    EXPECT(shmbus_publish_timeout(pub, big, max + 1, 10), SHMBUS_ERR_TOO_LARGE);
    void *buf = (void *)1;
    EXPECT(shmbus_loan(pub, max + 1, &buf), SHMBUS_ERR_TOO_LARGE);
    REQUIRE(buf == NULL);
    EXPECT(shmbus_try_loan(pub, SIZE_MAX, &buf), SHMBUS_ERR_TOO_LARGE);
    OK(shmbus_publish(pub, big, max)); /* the limit itself is fine */
    free(big);
    shmbus_publisher_free(pub);
    ok("too-large");
}

static void states(shmbus_client *client) {
    shmbus_publisher *pub;
    shmbus_subscriber *sub;
    OK(shmbus_subscribe(client, "errors/state", &sub));
    OK(shmbus_publisher_new(client, "errors/state", &pub));
    uint64_t seq;
    EXPECT(shmbus_publisher_last_sequence(pub, &seq), SHMBUS_ERR_STATE);
    EXPECT(shmbus_commit(pub, 0), SHMBUS_ERR_STATE);
    ERROR_MENTIONS("no loan is outstanding");
    EXPECT(shmbus_abort(pub), SHMBUS_ERR_STATE);

    void *buf, *again = (void *)1;
    OK(shmbus_loan(pub, 16, &buf));
    REQUIRE(buf != NULL && (uintptr_t)buf % 16 == 0);
    EXPECT(shmbus_loan(pub, 16, &again), SHMBUS_ERR_STATE);
    REQUIRE(again == NULL);
    ERROR_MENTIONS("a loan is outstanding");
    EXPECT(shmbus_try_loan(pub, 16, &again), SHMBUS_ERR_STATE);
    EXPECT(shmbus_publish(pub, "x", 1), SHMBUS_ERR_STATE);
    EXPECT(shmbus_try_publish(pub, "x", 1), SHMBUS_ERR_STATE);
    EXPECT(shmbus_publisher_set_wait(pub, SHMBUS_WAIT_PARK, 0), SHMBUS_ERR_STATE);
    uint32_t id;
    OK(shmbus_publisher_id(pub, &id)); /* queries work during a loan */
    memcpy(buf, "0123456789abcdef", 16);
    EXPECT(shmbus_commit(pub, 17), SHMBUS_ERR_INVALID_ARGUMENT);
    ERROR_MENTIONS("commit of 17 bytes exceeds the loan of 16 bytes");
    OK(shmbus_commit(pub, 10)); /* the loan was still outstanding */
    OK(shmbus_publisher_last_sequence(pub, &seq));
    EXPECT(shmbus_commit(pub, 10), SHMBUS_ERR_STATE);
    OK(shmbus_publish(pub, "second", 6));
    uint64_t seq2;
    OK(shmbus_publisher_last_sequence(pub, &seq2));
    REQUIRE(seq2 > seq);

    shmbus_sample s, copy;
    OK(shmbus_recv(sub, &s, 1000));
    REQUIRE(s.len == 10 && memcmp(s.data, "0123456789", 10) == 0);
    REQUIRE(s.sequence == seq && s.publisher == id);
    copy = s;
    shmbus_sample other;
    memset(&other, 0x55, sizeof other);
    EXPECT(shmbus_recv(sub, &other, 0), SHMBUS_ERR_STATE);
    ERROR_MENTIONS("a sample is still held");
    EXPECT(shmbus_recv(sub, &s, 0), SHMBUS_ERR_STATE);
    REQUIRE(s.data == copy.data && s.len == 10); /* left untouched */
    EXPECT(shmbus_subscriber_add_pattern(sub, "errors/more"), SHMBUS_ERR_STATE);
    OK(shmbus_sample_release(&s));
    REQUIRE(s.data == NULL && s.topic == NULL && s.len == 0); /* zeroed */
    OK(shmbus_sample_release(&s));                            /* releasing twice: no-op */
    EXPECT(shmbus_sample_release(&copy), SHMBUS_ERR_STATE);   /* a stale copy */
    ERROR_MENTIONS("released already");
    OK(shmbus_recv(sub, &s, 1000));
    REQUIRE(s.len == 6 && memcmp(s.data, "second", 6) == 0 && s.sequence == seq2);
    EXPECT(shmbus_sample_release(&copy), SHMBUS_ERR_STATE); /* older than the held one */
    OK(shmbus_sample_release(&s));

    /* Free with a loan out aborts it; free with a sample held releases it. */
    OK(shmbus_loan(pub, 8, &buf));
    shmbus_publisher_free(pub);
    OK(shmbus_publisher_new(client, "errors/state", &pub));
    OK(shmbus_publish(pub, "third", 5));
    OK(shmbus_recv(sub, &s, 1000));
    REQUIRE(s.len == 5 && memcmp(s.data, "third", 5) == 0); /* the aborted loan was skipped */
    shmbus_subscriber_free(sub);
    shmbus_publisher_free(pub);
    ok("state");
}

static void timeouts(shmbus_client *client) {
    shmbus_subscriber *sub;
    OK(shmbus_subscribe(client, "errors/quiet", &sub));
    shmbus_sample s;
    memset(&s, 0x55, sizeof s);
    double t0 = now_ms();
    EXPECT(shmbus_recv(sub, &s, SHMBUS_NO_WAIT), SHMBUS_ERR_TIMEOUT);
    REQUIRE(s.data == NULL && s._subscriber == NULL); /* zeroed on failure */
    EXPECT(shmbus_recv(sub, &s, 50), SHMBUS_ERR_TIMEOUT);
    double elapsed = now_ms() - t0;
    REQUIRE(elapsed >= 50.0 && elapsed < 5000.0);
    ERROR_MENTIONS("no message before the timeout");
    shmbus_subscriber_free(sub);

    /* A full ring: a tethered subscriber that does not read holds the publisher back. */
    OK(shmbus_subscribe(client, "errors/full", &sub));
    shmbus_publisher *pub;
    OK(shmbus_publisher_new(client, "errors/full", &pub));
    static char chunk[60000];
    int published = 0, rc;
    while ((rc = shmbus_try_publish(pub, chunk, sizeof chunk)) == SHMBUS_OK && published < 10000)
        published++;
    EXPECT(rc, SHMBUS_ERR_FULL);
    ERROR_MENTIONS("ring full");
    REQUIRE(published > 0);
    EXPECT(shmbus_publish_timeout(pub, chunk, sizeof chunk, 0), SHMBUS_ERR_FULL);
    t0 = now_ms();
    EXPECT(shmbus_publish_timeout(pub, chunk, sizeof chunk, 50), SHMBUS_ERR_TIMEOUT);
    REQUIRE(now_ms() - t0 >= 50.0);
    void *buf;
    EXPECT(shmbus_try_loan(pub, sizeof chunk, &buf), SHMBUS_ERR_FULL);
    EXPECT(shmbus_loan_timeout(pub, sizeof chunk, 20, &buf), SHMBUS_ERR_TIMEOUT);
    REQUIRE(buf == NULL);
    REQUIRE(drain(sub) == published); /* nothing lost, nothing extra */
    OK(shmbus_try_publish(pub, chunk, sizeof chunk));
    OK(shmbus_loan_timeout(pub, 8, 20, &buf));
    OK(shmbus_abort(pub));
    shmbus_publisher_free(pub);
    shmbus_subscriber_free(sub);
    ok("timeout-and-full");
}

static void descriptions(void) {
    /* SHMBUS_ERR_PERMISSION_DENIED is the lowest code. */
    for (int code = 0; code >= SHMBUS_ERR_PERMISSION_DENIED; code--) {
        const char *d = shmbus_strerror(code);
        REQUIRE(d != NULL && d[0] != '\0' && strstr(d, "unknown") == NULL);
        for (int other = 0; other > code; other--) REQUIRE(strcmp(d, shmbus_strerror(other)) != 0);
    }
    REQUIRE(strcmp(shmbus_strerror(1), "unknown shmbus status code") == 0);
    REQUIRE(strcmp(shmbus_strerror(SHMBUS_ERR_PERMISSION_DENIED - 1), "unknown shmbus status code") == 0);
    REQUIRE(strcmp(shmbus_strerror(SHMBUS_OK), "success") == 0);
    REQUIRE(shmbus_version()[0] != '\0');
    ok("strerror");
}

static int errors(const char *bus, const char *dir) {
    REQUIRE(strcmp(shmbus_last_error(), "") == 0); /* nothing failed yet */
    shmbus_client *client;
    OK(shmbus_connect(bus, &client));
    null_arguments(bus, client);
    invalid_topics(client);
    addresses(bus, dir, client);
    invalid_arguments(client);
    too_large(client);
    states(client);
    timeouts(client);
    descriptions();
    shmbus_client_free(client);
    return 0;
}

/* The mapping of this process that holds `p`: its permissions and name. */
static int find_mapping(const void *p, char perms[5], char *name, size_t name_len) {
    FILE *maps = fopen("/proc/self/maps", "r");
    REQUIRE(maps != NULL);
    char line[1024];
    int found = 0;
    while (!found && fgets(line, sizeof line, maps)) {
        uintptr_t start, end;
        char path[512] = "";
        if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " %4s %*s %*s %*s %511[^\n]", &start, &end, perms,
                   path) < 3)
            continue;
        if ((uintptr_t)p >= start && (uintptr_t)p < end) {
            snprintf(name, name_len, "%s", path);
            found = 1;
        }
    }
    fclose(maps);
    return found;
}

static int zerocopy(const char *bus) {
    shmbus_client *client;
    shmbus_publisher *pub;
    shmbus_subscriber *sub;
    OK(shmbus_connect(bus, &client));
    OK(shmbus_subscribe(client, "zc/**", &sub));
    OK(shmbus_publisher_new(client, "zc/t", &pub));

    void *buf;
    OK(shmbus_loan(pub, 256, &buf));
    char perms[5], name[512];
    REQUIRE(find_mapping(buf, perms, name, sizeof name));
    /* The loan is in the ring: a shared, writable mapping of a memfd. */
    REQUIRE(strstr(name, "memfd:") != NULL && perms[0] == 'r' && perms[1] == 'w' && perms[3] == 's');
    for (int i = 0; i < 256; i++) ((unsigned char *)buf)[i] = (unsigned char)(i * 7);
    OK(shmbus_commit(pub, 200));
    ok("loan-in-ring");

    shmbus_sample s;
    OK(shmbus_recv(sub, &s, 1000));
    REQUIRE(s.len == 200 && strcmp(s.topic, "zc/t") == 0 && s.topic_len == 4);
    REQUIRE(find_mapping(s.data, perms, name, sizeof name));
    /* The sample is the frame itself, in the ring mapped read-only for subscribers. */
    REQUIRE(strstr(name, "memfd:") != NULL && perms[0] == 'r' && perms[1] == '-' && perms[3] == 's');
    REQUIRE(s.data != buf && (uintptr_t)s.data % 4096 == (uintptr_t)buf % 4096);
    for (int i = 0; i < 200; i++) REQUIRE(((const unsigned char *)s.data)[i] == (unsigned char)(i * 7));
    REQUIRE((uintptr_t)s.data % 16 == 0);
    OK(shmbus_sample_release(&s));
    ok("recv-in-place");

    /* An aborted loan publishes nothing; the next message arrives. */
    OK(shmbus_loan(pub, 64, &buf));
    memset(buf, 'x', 64);
    OK(shmbus_abort(pub));
    OK(shmbus_try_loan(pub, 5, &buf));
    memcpy(buf, "after", 5);
    OK(shmbus_commit(pub, 5));
    OK(shmbus_recv(sub, &s, 1000));
    REQUIRE(s.len == 5 && memcmp(s.data, "after", 5) == 0);
    OK(shmbus_sample_release(&s));
    EXPECT(shmbus_recv(sub, &s, 0), SHMBUS_ERR_TIMEOUT);
    ok("abort");

    /* shmbus_recv_next: each call releases the held sample and receives the next. */
    for (int i = 0; i < 3; i++) {
        char text[2] = {(char)('a' + i), 0};
        OK(shmbus_publish(pub, text, 1));
    }
    shmbus_sample next = {0}, stale;
    for (int i = 0; i < 3; i++) {
        OK(shmbus_recv_next(sub, &next, 1000));
        REQUIRE(next.len == 1 && ((const char *)next.data)[0] == 'a' + i);
        REQUIRE(strcmp(next.topic, "zc/t") == 0);
        if (i == 0) stale = next;
        /* One sample at a time: the plain receive still refuses while one is held. */
        EXPECT(shmbus_recv(sub, &s, 0), SHMBUS_ERR_STATE);
    }
    EXPECT(shmbus_sample_release(&stale), SHMBUS_ERR_STATE); /* released by a later call */
    EXPECT(shmbus_recv_next(sub, &next, 0), SHMBUS_ERR_TIMEOUT);
    REQUIRE(next.data == NULL && next._subscriber == NULL); /* zeroed, nothing held */
    OK(shmbus_publish(pub, "z", 1));
    OK(shmbus_recv(sub, &s, 1000)); /* so the plain receive works again */
    REQUIRE(s.len == 1 && ((const char *)s.data)[0] == 'z');
    OK(shmbus_sample_release(&s));
    ok("recv-next");

    shmbus_publisher_free(pub);
    shmbus_subscriber_free(sub);
    shmbus_client_free(client);
    return 0;
}

static int lossy(const char *bus, const char *topic) {
    shmbus_client *client;
    shmbus_subscriber *sub;
    OK(shmbus_connect(bus, &client));
    shmbus_subscriber_options options = {0};
    options.lossy = true;
    OK(shmbus_subscribe_with(client, topic, &options, &sub));
    uint64_t missed = 1;
    OK(shmbus_subscriber_lagged(sub, &missed));
    REQUIRE(missed == 0);
    printf("subscribed\n");
    fflush(stdout);
    wait_for_line();
    shmbus_sample s;
    EXPECT(shmbus_recv(sub, &s, 5000), SHMBUS_ERR_LAGGED);
    ERROR_MENTIONS(topic);
    OK(shmbus_subscriber_lagged(sub, &missed));
    REQUIRE(missed > 0);
    printf("lagged %" PRIu64 "\n", missed);
    /* Receiving goes on from the oldest message still in the ring. */
    int received = 0;
    while (shmbus_recv(sub, &s, 0) == SHMBUS_OK) {
        REQUIRE(s.len > 0);
        OK(shmbus_sample_release(&s));
        received++;
    }
    REQUIRE(received > 0);
    printf("then %d\n", received);
    shmbus_subscriber_free(sub);
    shmbus_client_free(client);
    ok("lossy");
    return 0;
}

static int gone(const char *bus) {
    shmbus_client *client;
    shmbus_publisher *pub;
    shmbus_subscriber *sub;
    OK(shmbus_connect(bus, &client));
    OK(shmbus_publisher_new(client, "gone/t", &pub));
    OK(shmbus_subscribe(client, "gone/t", &sub));
    printf("ready\n");
    fflush(stdout);
    wait_for_line();

    /* The client notices on its own. */
    bool connected = true;
    for (double t0 = now_ms(); connected && now_ms() - t0 < 10000;) {
        OK(shmbus_client_is_connected(client, &connected));
        if (connected) nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
    }
    REQUIRE(!connected);
    shmbus_publisher *pub2 = (shmbus_publisher *)1;
    EXPECT(shmbus_publisher_new(client, "gone/other", &pub2), SHMBUS_ERR_BROKER_GONE);
    REQUIRE(pub2 == NULL);
    ERROR_MENTIONS("gone/other");
    shmbus_subscriber *sub2 = (shmbus_subscriber *)1;
    EXPECT(shmbus_subscribe(client, "gone/**", &sub2), SHMBUS_ERR_BROKER_GONE);
    REQUIRE(sub2 == NULL);
    /* The subscriber is told once that the broker is gone, then goes on: what was attached
       keeps working through shared memory. */
    shmbus_sample s;
    EXPECT(shmbus_recv(sub, &s, 1000), SHMBUS_ERR_BROKER_GONE);
    OK(shmbus_publish(pub, "still here", 10));
    OK(shmbus_recv(sub, &s, 1000));
    REQUIRE(s.len == 10 && memcmp(s.data, "still here", 10) == 0);
    OK(shmbus_sample_release(&s));
    /* A new connection finds nobody. */
    shmbus_client *again = (shmbus_client *)1;
    EXPECT(shmbus_connect(bus, &again), SHMBUS_ERR_UNREACHABLE);
    REQUIRE(again == NULL);
    shmbus_publisher_free(pub);
    shmbus_subscriber_free(sub);
    shmbus_client_free(client);
    ok("broker-gone");
    return 0;
}

static int reqrep(const char *bus) {
    shmbus_client *client = NULL, *other = NULL;
    OK(shmbus_connect(bus, &client));
    OK(shmbus_connect(bus, &other));
    shmbus_response response = {0};
    shmbus_incoming_request request = {0};
    shmbus_server *server = NULL, *second = NULL;

    EXPECT(shmbus_request(client, "p/nobody", "x", 1, &response, 5000), SHMBUS_ERR_NO_SERVER);
    ERROR_MENTIONS("p/nobody");
    REQUIRE(response.data == NULL && response._owner == NULL);
    EXPECT(shmbus_request(client, "p/*", "x", 1, &response, 5000), SHMBUS_ERR_INVALID_TOPIC);
    EXPECT(shmbus_request(NULL, "p/x", "x", 1, &response, 0), SHMBUS_ERR_NULL);
    EXPECT(shmbus_request(client, "p/x", NULL, 1, &response, 0), SHMBUS_ERR_NULL);
    EXPECT(shmbus_serve(client, "p/**", &server), SHMBUS_ERR_INVALID_TOPIC);
    REQUIRE(server == NULL);

    OK(shmbus_serve(client, "p/x", &server));
    EXPECT(shmbus_serve(other, "p/x", &second), SHMBUS_ERR_ALREADY_SERVED);
    ERROR_MENTIONS("p/x");
    REQUIRE(second == NULL);
    EXPECT(shmbus_server_set_wait(server, 99, 0), SHMBUS_ERR_INVALID_ARGUMENT);
    OK(shmbus_server_set_wait(server, SHMBUS_WAIT_PARK, 0));
    EXPECT(shmbus_serve_recv(server, &request, SHMBUS_NO_WAIT), SHMBUS_ERR_TIMEOUT);

    /* Nobody receives yet: the request times out, and its late answer goes nowhere. */
    EXPECT(shmbus_request(other, "p/x", "hi", 2, &response, 100), SHMBUS_ERR_TIMEOUT);
    OK(shmbus_serve_recv(server, &request, 5000));
    REQUIRE(request.len == 2 && memcmp(request.data, "hi", 2) == 0);
    int late = shmbus_reply(&request, "late", 4);
    REQUIRE(late == SHMBUS_OK || late == SHMBUS_ERR_REQUESTER_GONE);
    REQUIRE(request._owner == NULL);
    EXPECT(shmbus_reply(&request, "again", 5), SHMBUS_ERR_STATE);
    EXPECT(shmbus_reply_with(&request, 4, NULL, NULL), SHMBUS_ERR_NULL);
    OK(shmbus_incoming_release(&request));
    OK(shmbus_response_release(&response));
    EXPECT(shmbus_reply(NULL, "x", 1), SHMBUS_ERR_NULL);
    EXPECT(shmbus_serve_recv(NULL, &request, 0), SHMBUS_ERR_NULL);

    size_t max = 0;
    OK(shmbus_client_max_payload(client, &max));
    char *big = calloc(max, 1);
    REQUIRE(big != NULL);
    EXPECT(shmbus_request(other, "p/x", big, max, &response, 100), SHMBUS_ERR_TOO_LARGE);
    free(big);

    REQUIRE(strcmp(shmbus_strerror(SHMBUS_ERR_NO_SERVER), "nobody serves the topic") == 0);
    REQUIRE(strcmp(shmbus_strerror(SHMBUS_ERR_ABANDONED),
                   "the server dropped the request without answering") == 0);
    shmbus_server_free(server);
    shmbus_server_free(NULL);
    shmbus_client_free(other);
    shmbus_client_free(client);
    ok("reqrep");
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "errors") == 0) return errors(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "zerocopy") == 0) return zerocopy(argv[2]);
    if (argc == 4 && strcmp(argv[1], "lossy") == 0) return lossy(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "gone") == 0) return gone(argv[2]);
    if (argc == 3 && strcmp(argv[1], "reqrep") == 0) return reqrep(argv[2]);
    fprintf(stderr,
            "usage: peer errors BUS DIR | zerocopy BUS | lossy BUS TOPIC | gone BUS | reqrep BUS\n");
    return 2;
}
