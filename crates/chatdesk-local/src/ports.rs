//! Free loopback ports. The kernel picks a free one; there is a short race until the server
//! binds it, which callers absorb by retrying start-up on a new port.

use std::net::{Ipv4Addr, TcpListener};

use crate::LocalError;

pub fn free_port() -> Result<u16, LocalError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|_| LocalError::NoFreePort)?;
    listener.local_addr().map(|addr| addr.port()).map_err(|_| LocalError::NoFreePort)
}

pub fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A free port `p` whose cluster bus port `p + 10000` is free too.
pub fn free_cluster_port() -> Result<u16, LocalError> {
    for _ in 0..200 {
        let port = free_port()?;
        if port < 55_000 && is_free(port + 10_000) {
            return Ok(port);
        }
    }
    Err(LocalError::NoFreePort)
}
