//! Hardening tests: storage_faults.
