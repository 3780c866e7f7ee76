/*
 * pub.c: publish messages on a shmbus topic.
 *
 *   pub [-b BUS] TOPIC MESSAGE...    each MESSAGE once, with shmbus_publish (one copy)
 *   pub [-b BUS] -n COUNT TOPIC      COUNT messages "TOPIC #i", each formatted straight into
 *                                    the ring with shmbus_loan + shmbus_commit (zero copy)
 *   pub [-b BUS] TOPIC               each line of standard input
 *
 * BUS is a bus name or a broker socket path (default: $SHMBUS_BUS, else "default").
 * Exit status: 0 once every message is in the ring, 1 on error, 2 on bad usage,
 * 3 when no broker answers. Messages published before a subscriber subscribed are not
 * delivered to it: start `sub` first.
 */
#define _POSIX_C_SOURCE 200809L
#include <shmbus.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fail(const char *what, int rc) {
    fprintf(stderr, "pub: %s: %s (%s)\n", what, shmbus_last_error(), shmbus_strerror(rc));
    return shmbus_exit_code(rc);
}

/* Formats "TOPIC #i" directly in the ring: no intermediate buffer. */
static int publish_counted(shmbus_publisher *pub, const char *topic, long count) {
    for (long i = 0; i < count; i++) {
        int len = snprintf(NULL, 0, "%s #%ld", topic, i);
        void *buf;
        int rc = shmbus_loan(pub, (size_t)len + 1, &buf); /* +1: room for snprintf's NUL */
        if (rc != SHMBUS_OK) return fail("shmbus_loan", rc);
        snprintf(buf, (size_t)len + 1, "%s #%ld", topic, i);
        rc = shmbus_commit(pub, (size_t)len); /* publish without the NUL */
        if (rc != SHMBUS_OK) return fail("shmbus_commit", rc);
    }
    return 0;
}

static int publish_lines(shmbus_publisher *pub) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int status = 0;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        if (line[n - 1] == '\n') n--;
        int rc = shmbus_publish(pub, line, (size_t)n);
        if (rc != SHMBUS_OK) {
            status = fail("shmbus_publish", rc);
            break;
        }
    }
    free(line);
    return status;
}

int main(int argc, char **argv) {
    const char *bus = NULL;
    long count = -1;
    int opt;
    while ((opt = getopt(argc, argv, "b:n:")) != -1) {
        switch (opt) {
        case 'b': bus = optarg; break;
        case 'n': count = strtol(optarg, NULL, 10); break;
        default: goto usage;
        }
    }
    if (optind >= argc || count < -1 || (count >= 0 && optind + 1 != argc)) goto usage;
    const char *topic = argv[optind];

    shmbus_client *client = NULL;
    shmbus_publisher *pub = NULL;
    int status = 0;
    int rc = shmbus_connect(bus, &client);
    if (rc != SHMBUS_OK) return fail("shmbus_connect", rc);
    rc = shmbus_publisher_new(client, topic, &pub);
    if (rc != SHMBUS_OK) {
        status = fail("shmbus_publisher_new", rc);
    } else if (count >= 0) {
        status = publish_counted(pub, topic, count);
    } else if (optind + 1 < argc) {
        for (int i = optind + 1; i < argc && status == 0; i++) {
            rc = shmbus_publish(pub, argv[i], strlen(argv[i]));
            if (rc != SHMBUS_OK) status = fail("shmbus_publish", rc);
        }
    } else {
        status = publish_lines(pub);
    }
    shmbus_publisher_free(pub);
    shmbus_client_free(client);
    return status;

usage:
    fprintf(stderr, "usage: pub [-b BUS] TOPIC MESSAGE...\n"
                    "       pub [-b BUS] -n COUNT TOPIC\n"
                    "       pub [-b BUS] TOPIC < lines\n");
    return 2;
}
