//! Docker Engine API on the local unix socket. (being written)
