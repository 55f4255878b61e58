//! Root CA, node certificates, join tokens. (being written)
