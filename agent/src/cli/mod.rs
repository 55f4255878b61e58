//! The `apiary` command-line client. (being written)
