//! The `chatdesk` binary, run as a user runs it.

mod cli;
mod rest;
mod up;
