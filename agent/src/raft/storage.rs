//! redb-backed raft log and state machine. (being written)
