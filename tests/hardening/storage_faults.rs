//! storage_faults : hardening tests.
