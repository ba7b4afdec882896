//! Security (issue 12): users and their SCRAM credentials, against real broker processes on
//! 127.0.0.1; each module covers one part.

mod common;

#[path = "security/users.rs"]
mod users;
