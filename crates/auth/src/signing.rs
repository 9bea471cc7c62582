//! placeholder for the signing keyset
