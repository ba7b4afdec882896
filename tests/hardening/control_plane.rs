//! control_plane : hardening tests.
