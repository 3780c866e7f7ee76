/*
 * chat.c: two-way chat between terminals over shmbus.
 *
 *   chat [-b BUS] ROOM NAME
 *
 * Every line typed is published as "NAME: line" on the topic chat/ROOM; messages from the
 * others in the room are printed as they arrive. End with Ctrl-D (or Ctrl-C). Prints
 * "joined chat/ROOM as NAME" on stderr once subscribed.
 *
 * One thread: poll(2) waits for standard input for at most 20 ms at a time; in between, the
 * subscriber is drained without waiting. Each outgoing line is written straight into the ring
 * (shmbus_loan + shmbus_commit); each incoming message is printed from shared memory.
 */
#define _POSIX_C_SOURCE 200809L
#include <shmbus.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static void report(const char *what) {
    fprintf(stderr, "chat: %s: %s\n", what, shmbus_last_error());
}

/* Publishes "NAME: line" without an intermediate buffer. */
static int say(shmbus_publisher *pub, const char *name, const char *line, size_t len) {
    size_t name_len = strlen(name), total = name_len + 2 + len;
    void *loan;
    if (shmbus_loan(pub, total, &loan) != SHMBUS_OK) {
        report("shmbus_loan");
        return -1;
    }
    char *buf = loan;
    memcpy(buf, name, name_len);
    memcpy(buf + name_len, ": ", 2);
    memcpy(buf + name_len + 2, line, len);
    if (shmbus_commit(pub, total) != SHMBUS_OK) {
        report("shmbus_commit");
        return -1;
    }
    return 0;
}

/* Prints everything waiting, except our own messages. */
static int drain(shmbus_subscriber *sub, uint32_t me) {
    for (;;) {
        shmbus_sample s;
        int rc = shmbus_recv(sub, &s, SHMBUS_NO_WAIT);
        if (rc == SHMBUS_ERR_TIMEOUT) return 0;
        if (rc == SHMBUS_ERR_LAGGED) {
            report("shmbus_recv");
            continue;
        }
        if (rc != SHMBUS_OK) {
            report("shmbus_recv");
            return -1;
        }
        if (s.publisher != me) printf("%.*s\n", (int)s.len, (const char *)s.data);
        if (shmbus_sample_release(&s) != SHMBUS_OK) {
            report("shmbus_sample_release");
            return -1;
        }
    }
}

int main(int argc, char **argv) {
    const char *bus = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "b:")) != -1) {
        if (opt != 'b') goto usage;
        bus = optarg;
    }
    if (argc - optind != 2) goto usage;
    const char *name = argv[optind + 1];
    char topic[300];
    if (snprintf(topic, sizeof topic, "chat/%s", argv[optind]) >= (int)sizeof topic) {
        fprintf(stderr, "chat: room name too long\n");
        return 2;
    }

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);

    shmbus_client *client = NULL;
    shmbus_subscriber *sub = NULL;
    shmbus_publisher *pub = NULL;
    uint32_t me = 0;
    int status = 1, rc;
    if ((rc = shmbus_connect(bus, &client)) != SHMBUS_OK) {
        report("shmbus_connect");
        return shmbus_exit_code(rc);
    }
    if (shmbus_subscribe(client, topic, &sub) != SHMBUS_OK) {
        report("shmbus_subscribe");
        goto out;
    }
    if (shmbus_publisher_new(client, topic, &pub) != SHMBUS_OK) {
        report("shmbus_publisher_new");
        goto out;
    }
    if (shmbus_publisher_id(pub, &me) != SHMBUS_OK) {
        report("shmbus_publisher_id");
        goto out;
    }
    fprintf(stderr, "joined %s as %s\n", topic, name);

    char line[4096];
    size_t have = 0;
    int open = 1;
    while (open && !stop) {
        if (drain(sub, me) != 0) goto out;
        struct pollfd in = {.fd = STDIN_FILENO, .events = POLLIN};
        int ready = poll(&in, 1, 20);
        if (ready < 0 && errno != EINTR) {
            perror("chat: poll");
            goto out;
        }
        if (ready <= 0) continue;
        ssize_t n = read(STDIN_FILENO, line + have, sizeof line - have);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            open = 0; /* end of input: say the last unterminated line, if any, and leave */
            if (have > 0 && say(pub, name, line, have) != 0) goto out;
            break;
        }
        have += (size_t)n;
        char *start = line, *nl;
        while ((nl = memchr(start, '\n', have - (size_t)(start - line))) != NULL) {
            if (say(pub, name, start, (size_t)(nl - start)) != 0) goto out;
            start = nl + 1;
        }
        have -= (size_t)(start - line);
        memmove(line, start, have);
        if (have == sizeof line) { /* a very long line: send what we have */
            if (say(pub, name, line, have) != 0) goto out;
            have = 0;
        }
    }
    status = drain(sub, me) == 0 ? 0 : 1;
out:
    shmbus_publisher_free(pub);
    shmbus_subscriber_free(sub);
    shmbus_client_free(client);
    return status;

usage:
    fprintf(stderr, "usage: chat [-b BUS] ROOM NAME\n");
    return 2;
}
