//! Lock-free shared-memory rings for shmbus.
