//! The writer against real Redis and PostgreSQL.

mod support;
mod writer;
