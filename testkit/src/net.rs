//! Free loopback ports: bound once to port 0, read, released for the process under test to take
//! a moment later.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};

/// A UDP address on 127.0.0.1 that was free a moment ago (sigil's QUIC port).
pub fn free_udp_addr() -> io::Result<SocketAddr> {
    UdpSocket::bind("127.0.0.1:0")?.local_addr()
}

/// The port of [`free_udp_addr`]; panics when none can be had.
pub fn free_port() -> u16 {
    free_udp_addr().expect("a free UDP port").port()
}

/// Two consecutive free TCP ports on 127.0.0.1, `port` and `port + 1` (swtpm's server and
/// control sockets); the first.
pub fn free_tcp_port_pair() -> u16 {
    for _ in 0..100 {
        let Ok(first) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = first.local_addr().map(|a| a.port()) else {
            continue;
        };
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports");
}
