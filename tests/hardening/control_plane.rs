//! Hardening tests: control_plane.
