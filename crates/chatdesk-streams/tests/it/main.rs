//! Integration tests of the streams layer against real Redis servers (see chatdesk-testkit).

mod batching;
mod claim;
mod competing;
mod dead_letters;
mod exclusive;
mod live;
mod redis_restart;
mod retention;
mod scripts;
mod shutdown;
mod support;
