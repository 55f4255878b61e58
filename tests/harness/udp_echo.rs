//! `udp-echo <port>`: sends every datagram back to its sender, prefixed
//! with `echo:`. Built by the test harness (`image::udp_echo`) as a static
//! program for test images; not part of apiary.

use std::net::{Ipv4Addr, UdpSocket};

fn main() {
    let port: u16 = match std::env::args().nth(1).map(|p| p.parse()) {
        Some(Ok(p)) => p,
        _ => {
            eprintln!("usage: udp-echo <port>");
            std::process::exit(2);
        }
    };
    let socket = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("udp-echo: bind 0.0.0.0:{port}: {e}");
            std::process::exit(1);
        }
    };
    println!("udp-echo listening on {port}");
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                if let Err(e) = socket.send_to(&reply, from) {
                    eprintln!("udp-echo: reply to {from}: {e}");
                }
            }
            Err(e) => eprintln!("udp-echo: receive: {e}"),
        }
    }
}
