//! Loopback ports for servers a test starts on an address it chose itself.
//!
//! A port the kernel hands out (bind to port 0) comes from its ephemeral range, the same range
//! the local end of every outgoing connection comes from. Between the choice and the server's
//! bind, another test's connection or server can take it; the server then fails to start, or,
//! worse, the test's readiness check reaches the other test's server. So these ports come from
//! outside the ephemeral range, where no outgoing connection lands (on a kernel whose range
//! leaves no room, or that does not say, from the kernel's choice). And the process that chose
//! one holds a UDP socket bound to the same number for as long as it lives. Every test process
//! chooses by binding that UDP socket first, so two tests never pick the same port; a TCP server
//! binds the port undisturbed, and the kernel frees the UDP one with the process, whatever way
//! it ends.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::sync::Mutex;

/// Reservations this process holds, one per port it chose.
static HELD: Mutex<Vec<UdpSocket>> = Mutex::new(Vec::new());

/// Where no port below is taken by anything the tests start on their own.
const LOWEST: u16 = 10_000;

/// A free loopback port, this test process's alone until it exits.
pub fn free_port() -> u16 {
    let range = ephemeral_range().map(outside_ephemeral).unwrap_or(0..0);
    if range.len() < 1_000 {
        // No room outside the ephemeral range, or no telling where it is: the kernel's choice,
        // which an outgoing connection may still take first, but no other test.
        for _ in 0..1_000 {
            let port = chatdesk_local::ports::free_port().expect("a free loopback port");
            if let Some(port) = reserve(port) {
                return port;
            }
        }
        panic!("no free loopback port");
    }
    let span = range.len() as u32;
    let start = start_offset() % span;
    for step in 0..span {
        let port = range.start + ((start + step) % span) as u16;
        if let Some(port) = reserve(port) {
            return port;
        }
    }
    panic!("no free loopback port in {range:?}");
}

/// Holds `port` for this process, if no other test process holds it and nothing listens there.
fn reserve(port: u16) -> Option<u16> {
    let reservation = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).ok()?;
    // Something outside the tests may listen there; dropping the reservation releases it.
    if !chatdesk_local::ports::is_free(port) {
        return None;
    }
    HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(reservation);
    Some(port)
}

/// `127.0.0.1:<free_port()>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The kernel's ephemeral range (Linux's `ip_local_port_range`).
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut bounds = text.split_whitespace().map(|bound| bound.parse::<u16>());
    Some((bounds.next()?.ok()?, bounds.next()?.ok()?))
}

/// The wider of the two stretches of ports around the ephemeral range.
fn outside_ephemeral((low, high): (u16, u16)) -> Range<u16> {
    let below = LOWEST..low.max(LOWEST);
    let above = high.saturating_add(1).max(LOWEST)..u16::MAX;
    if below.len() >= above.len() { below } else { above }
}

/// Where this process starts looking, so that concurrent processes rarely try the same ports.
fn start_offset() -> u32 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.subsec_nanos());
    std::process::id().wrapping_mul(2_654_435_761).wrapping_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_outside_the_ephemeral_range() {
        assert_eq!(outside_ephemeral((32_768, 60_999)), 10_000..32_768);
        assert_eq!(outside_ephemeral((1_024, 40_000)), 40_001..u16::MAX);
        assert_eq!(outside_ephemeral((10_000, 65_535)).len(), 0);
    }

    #[test]
    fn a_port_is_never_handed_out_twice_while_its_holder_lives() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        if let Some((low, high)) = ephemeral_range().filter(|range| outside_ephemeral(*range).len() >= 1_000) {
            assert!(ports.iter().all(|port| !(low..=high).contains(port)), "{ports:?}");
        }
        // Another process choosing now cannot take one, and a server can.
        assert!(UdpSocket::bind((Ipv4Addr::LOCALHOST, ports[0])).is_err());
        assert!(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, ports[0])).is_ok());
    }
}
