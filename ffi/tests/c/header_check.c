/* Compiled as C11 and as C++17 with -Wall -Wextra -Werror -pedantic by tests/header.rs. */
#include <shmbus.h>
#include <shmbus.h> /* the include guard holds */

#ifdef __cplusplus
#define STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif

STATIC_ASSERT(SHMBUS_OK == 0, "SHMBUS_OK is 0");
STATIC_ASSERT(SHMBUS_ERR_NULL < 0 && SHMBUS_ERR_OTHER < 0, "errors are negative");
STATIC_ASSERT(SHMBUS_WAIT_FOREVER < 0 && SHMBUS_NO_WAIT == 0, "timeout convention");

int header_check(void);
int header_check(void) {
    static shmbus_sample sample;
    static shmbus_subscriber_options options;
    int (*recv)(shmbus_subscriber *, shmbus_sample *, int32_t) = shmbus_recv;
    int (*loan)(shmbus_publisher *, size_t, void **) = shmbus_loan;
    const char *(*last_error)(void) = shmbus_last_error;
    (void)recv;
    (void)loan;
    (void)last_error;
    return (int)sample.len + (int)options.history;
}
