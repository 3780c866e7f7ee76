/*
 * calc: request/response with the shmbus C API.
 *
 *   calc serve [--bus ADDR] [--count N]   serve "calc/add": each request is two integers as
 *                                         text ("2 3"), the answer their sum ("5"); a request
 *                                         that is not two integers is released unanswered (its
 *                                         requester learns it was abandoned). Prints
 *                                         "serving calc/add" on stderr once serving; exits after
 *                                         N requests (default: never).
 *   calc ask [--bus ADDR] A B             ask the server and print the answer.
 *
 * The server reads each request in place and writes the answer in place (shmbus_reply_with):
 * no copy either way. Exit codes of `ask`: 0 answered, 5 nobody serves calc/add, 4 no answer
 * within 5 s, 1 any other error (the message goes to stderr).
 */
#include <shmbus.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOPIC "calc/add"

static int fail(const char *what, int rc) {
    fprintf(stderr, "calc: %s: %s (%s)\n", what, shmbus_strerror(rc), shmbus_last_error());
    return shmbus_exit_code(rc);
}

/* Parses "A B" from the request's bytes (not NUL-terminated) into *a and *b. */
static int parse(const char *data, size_t len, long long *a, long long *b) {
    char text[64];
    if (len >= sizeof text) return 0;
    memcpy(text, data, len);
    text[len] = '\0';
    char extra;
    return sscanf(text, "%lld %lld %c", a, b, &extra) == 2;
}

/* Writes the sum of the request's two numbers into the requester's inbox (shmbus_reply_fn). */
static size_t write_sum(void *ctx, const void *request, size_t request_len, void *buf, size_t len) {
    long long a = 0, b = 0;
    (void)ctx;
    if (!parse(request, request_len, &a, &b)) return 0;
    int n = snprintf(buf, len, "%lld", a + b);
    return n < 0 ? 0 : (size_t)n < len ? (size_t)n : len;
}

static int serve(const char *bus, long count) {
    shmbus_client *client = NULL;
    shmbus_server *server = NULL;
    int rc = shmbus_connect(bus, &client);
    if (rc != SHMBUS_OK) return fail("connect", rc);
    rc = shmbus_serve(client, TOPIC, &server);
    if (rc != SHMBUS_OK) {
        shmbus_client_free(client);
        return fail("serve " TOPIC, rc);
    }
    fprintf(stderr, "serving %s\n", TOPIC);
    int status = 0;
    for (long served = 0; count < 0 || served < count; served++) {
        shmbus_incoming_request request = {0};
        rc = shmbus_serve_recv(server, &request, SHMBUS_WAIT_FOREVER);
        if (rc == SHMBUS_ERR_LAGGED || rc == SHMBUS_ERR_CORRUPT) continue;
        if (rc != SHMBUS_OK) {
            status = fail("receive", rc);
            break;
        }
        long long a, b;
        if (!parse(request.data, request.len, &a, &b)) {
            shmbus_incoming_release(&request); /* the requester hears it was abandoned */
            continue;
        }
        rc = shmbus_reply_with(&request, 32, write_sum, NULL);
        if (rc != SHMBUS_OK && rc != SHMBUS_ERR_REQUESTER_GONE) fail("reply", rc);
    }
    shmbus_server_free(server);
    shmbus_client_free(client);
    return status;
}

static int ask(const char *bus, const char *a, const char *b) {
    char question[64];
    int n = snprintf(question, sizeof question, "%s %s", a, b);
    if (n < 0 || (size_t)n >= sizeof question) {
        fprintf(stderr, "calc: numbers too long\n");
        return 2;
    }
    shmbus_client *client = NULL;
    int rc = shmbus_connect(bus, &client);
    if (rc != SHMBUS_OK) return fail("connect", rc);
    shmbus_response response = {0};
    rc = shmbus_request(client, TOPIC, question, (size_t)n, &response, 5000);
    int status = 0;
    if (rc == SHMBUS_OK) {
        printf("%.*s\n", (int)response.len, (const char *)response.data);
        shmbus_response_release(&response);
    } else {
        status = fail("ask " TOPIC, rc);
    }
    shmbus_client_free(client);
    return status;
}

static int usage(void) {
    fprintf(stderr, "usage: calc serve [--bus ADDR] [--count N]\n"
                    "       calc ask [--bus ADDR] A B\n");
    return 2;
}

int main(int argc, char **argv) {
    const char *bus = NULL;
    long count = -1;
    const char *args[2];
    int nargs = 0;
    if (argc < 2) return usage();
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--bus") == 0 && i + 1 < argc) {
            bus = argv[++i];
        } else if (strcmp(argv[i], "--count") == 0 && i + 1 < argc) {
            char *end;
            errno = 0;
            count = strtol(argv[++i], &end, 10);
            if (errno || *end || count < 0) return usage();
        } else if (nargs < 2) {
            args[nargs++] = argv[i];
        } else {
            return usage();
        }
    }
    if (strcmp(argv[1], "serve") == 0 && nargs == 0) return serve(bus, count);
    if (strcmp(argv[1], "ask") == 0 && nargs == 2) return ask(bus, args[0], args[1]);
    return usage();
}
