//! Integration tests of outbound delivery against real Redis and PostgreSQL servers (see
//! chatdesk-testkit) and a provider stand-in.

mod delivery;
mod limits;
