//! The C ABI of shmbus; its header is `ffi/include/shmbus.h`.
