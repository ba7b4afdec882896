//! replica_fetch : hardening tests.
