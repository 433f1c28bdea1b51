//! The `chatdesk` binary, run as a user runs it.

mod autoreply;
mod browser;
mod campaigns;
mod cli;
mod conformance;
mod gateway;
mod ingress;
mod ops;
mod rest;
mod security;
mod sender;
mod smtp;
mod standin;
mod support;
mod up;
mod workspace;
