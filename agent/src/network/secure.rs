//! Encrypted overlays (`--opt encrypted`) without IPsec or WireGuard in
//! the kernel: a user-space data path. Per encrypted network the node's
//! bridge gets a TAP link `apt<vni>` instead of a VXLAN one; the agent
//! reads each Ethernet frame from it, seals it with ChaCha20-Poly1305
//! (ring) under the network's traffic key and sends it over UDP to the
//! peer that has the destination MAC (learned from what arrives), or to
//! every peer for broadcast and unknown destinations, as VXLAN floods.
//! What arrives is opened, its source MAC learned, and written to the TAP.
//!
//! Datagram: VNI (4 bytes, big-endian; also the AEAD's associated data),
//! nonce (12: a random prefix drawn per process and a counter), then the
//! sealed frame and its 16-byte tag. A datagram that does not open under
//! the network's key (tampered, another swarm's, a stale key) is dropped.
//! One UDP socket per node, on the data path port + 1.
//!
//! `seal` and `open` are pure; the loops are `Tunnel`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use tracing::{debug, warn};

use super::{NetError, NetResult};

/// VNI, nonce, tag: what a datagram adds to the frame.
pub const OVERHEAD: usize = 4 + 12 + 16;
/// The MTU of a task on an encrypted network: 1500 less IPv4 and UDP
/// (28), the datagram's overhead (32) and the frame's Ethernet header (14),
/// rounded down.
pub const MTU: u32 = 1400;

pub fn tap_name(vni: u32) -> String {
    format!("apt{vni:x}")
}

pub fn key(bytes: &[u8; 32]) -> NetResult<LessSafeKey> {
    UnboundKey::new(&CHACHA20_POLY1305, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| {
            NetError::Invalid("the network's traffic key is not a ChaCha20-Poly1305 key".into())
        })
}

/// Nonces unique for this process: a random prefix and a counter.
pub struct Nonces {
    prefix: [u8; 4],
    next: AtomicU64,
}

impl Default for Nonces {
    fn default() -> Self {
        Nonces {
            prefix: rand::random(),
            next: AtomicU64::new(0),
        }
    }
}

impl Nonces {
    fn take(&self) -> [u8; 12] {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.prefix);
        out[4..].copy_from_slice(&n.to_be_bytes());
        out
    }
}

/// A frame sealed for the wire.
pub fn seal(key: &LessSafeKey, nonces: &Nonces, vni: u32, frame: &[u8]) -> Option<Vec<u8>> {
    let nonce = nonces.take();
    let mut out = Vec::with_capacity(frame.len() + OVERHEAD);
    out.extend_from_slice(&vni.to_be_bytes());
    out.extend_from_slice(&nonce);
    let mut body = frame.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(vni.to_be_bytes()),
        &mut body,
    )
    .ok()?;
    out.extend_from_slice(&body);
    Some(out)
}

/// The VNI a datagram is for.
pub fn vni_of(datagram: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(datagram.get(..4)?.try_into().ok()?))
}

/// The frame inside a datagram, if it opens under `key`.
pub fn open(key: &LessSafeKey, datagram: &[u8]) -> Option<Vec<u8>> {
    if datagram.len() < OVERHEAD {
        return None;
    }
    let vni: [u8; 4] = datagram[..4].try_into().ok()?;
    let nonce: [u8; 12] = datagram[4..16].try_into().ok()?;
    let mut body = datagram[16..].to_vec();
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(vni),
            &mut body,
        )
        .ok()?;
    Some(plain.to_vec())
}

fn mac(frame: &[u8], at: usize) -> Option<[u8; 6]> {
    frame.get(at..at + 6)?.try_into().ok()
}

/// One encrypted network on this node.
struct Net {
    key: LessSafeKey,
    peers: Vec<Ipv4Addr>,
    /// Where each MAC was last seen.
    macs: HashMap<[u8; 6], SocketAddr>,
    tap: Arc<tun::AsyncDevice>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Net {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The node's encrypted networks and their one socket. The table is read
/// on every frame and changed only when the views change: a lock, held
/// for map lookups only (never across an await).
pub struct Tunnel {
    sock: tokio::sync::OnceCell<Arc<tokio::net::UdpSocket>>,
    nets: Arc<RwLock<HashMap<u32, Net>>>,
    nonces: Arc<Nonces>,
}

impl Tunnel {
    pub fn new() -> Tunnel {
        Tunnel {
            sock: tokio::sync::OnceCell::new(),
            nets: Arc::new(RwLock::new(HashMap::new())),
            nonces: Arc::new(Nonces::default()),
        }
    }

    /// The socket, bound (and its receive loop started) on first use.
    async fn socket(&self, port: u16) -> NetResult<Arc<tokio::net::UdpSocket>> {
        let nets = self.nets.clone();
        self.sock
            .get_or_try_init(|| async move {
                let s = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
                    .await
                    .map_err(|e| NetError::Invalid(format!(
                        "cannot bind UDP port {port} for encrypted overlays: {e} (it is the data path port + 1; free it or choose another --data-path-port at swarm init)"
                    )))?;
                let s = Arc::new(s);
                tokio::spawn(receive(s.clone(), nets));
                Ok(s)
            })
            .await
            .cloned()
    }

    pub fn has(&self, vni: u32) -> bool {
        self.nets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&vni)
    }

    /// Make (or keep) the network's TAP link and update its key and peers.
    pub async fn ensure(
        &self,
        vni: u32,
        key_bytes: &[u8; 32],
        peers: Vec<Ipv4Addr>,
        port: u16,
    ) -> NetResult<()> {
        let sock = self.socket(port).await?;
        let key = key(key_bytes)?;
        {
            let mut nets = self
                .nets
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(n) = nets.get_mut(&vni) {
                n.key = key;
                n.macs.retain(|_, at| {
                    peers.contains(&match at.ip() {
                        std::net::IpAddr::V4(v) => v,
                        _ => Ipv4Addr::UNSPECIFIED,
                    })
                });
                n.peers = peers;
                return Ok(());
            }
        }
        let mut cfg = tun::Configuration::default();
        cfg.tun_name(tap_name(vni))
            .layer(tun::Layer::L2)
            .mtu(MTU as u16)
            .up();
        let tap = tun::create_as_async(&cfg).map_err(|e| {
            NetError::Invalid(format!(
                "cannot create the TAP link {} of an encrypted network: {e}",
                tap_name(vni)
            ))
        })?;
        let tap = Arc::new(tap);
        let reader = tokio::spawn(send(
            vni,
            tap.clone(),
            sock,
            self.nets.clone(),
            self.nonces.clone(),
            port,
        ));
        self.nets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                vni,
                Net {
                    key,
                    peers,
                    macs: HashMap::new(),
                    tap,
                    reader,
                },
            );
        Ok(())
    }

    /// The network left this node: its TAP link goes with its handle.
    pub fn remove(&self, vni: u32) {
        self.nets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&vni);
    }

    pub fn vnis(&self) -> Vec<u32> {
        self.nets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }
}

impl Default for Tunnel {
    fn default() -> Self {
        Tunnel::new()
    }
}

/// Frames from the TAP link out to the peers.
async fn send(
    vni: u32,
    tap: Arc<tun::AsyncDevice>,
    sock: Arc<tokio::net::UdpSocket>,
    nets: Arc<RwLock<HashMap<u32, Net>>>,
    nonces: Arc<Nonces>,
    port: u16,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match tap.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                warn!(vni, "reading the TAP link of an encrypted network: {e}");
                return;
            }
        };
        let frame = &buf[..n];
        let (datagram, to): (Option<Vec<u8>>, Vec<SocketAddr>) = {
            let nets = nets
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(net) = nets.get(&vni) else { return };
            let to = match mac(frame, 0) {
                Some(dst) if dst[0] & 1 == 0 && net.macs.contains_key(&dst) => {
                    net.macs.get(&dst).copied().into_iter().collect()
                }
                _ => net
                    .peers
                    .iter()
                    .map(|p| SocketAddr::from((*p, port)))
                    .collect(),
            };
            (seal(&net.key, &nonces, vni, frame), to)
        };
        let Some(d) = datagram else { continue };
        for peer in to {
            let _ = sock.send_to(&d, peer).await;
        }
    }
}

/// Datagrams from the peers into the TAP links.
async fn receive(sock: Arc<tokio::net::UdpSocket>, nets: Arc<RwLock<HashMap<u32, Net>>>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            return;
        };
        let Some(vni) = vni_of(&buf[..n]) else {
            continue;
        };
        let opened = {
            let mut nets = nets
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(net) = nets.get_mut(&vni) else {
                continue;
            };
            let from_v4 = match from.ip() {
                std::net::IpAddr::V4(v) => v,
                _ => continue,
            };
            if !net.peers.contains(&from_v4) {
                continue;
            }
            match open(&net.key, &buf[..n]) {
                Some(frame) => {
                    if let Some(src) = mac(&frame, 6) {
                        net.macs.insert(src, from);
                    }
                    Some((frame, net.tap.clone()))
                }
                None => {
                    debug!(vni, %from, "dropped a datagram that does not open under the network's key");
                    None
                }
            }
        };
        if let Some((frame, tap)) = opened {
            let _ = tap.send(&frame).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_frame_opens_only_under_its_key_and_unchanged() {
        let k = key(&[7u8; 32]).unwrap();
        let other = key(&[8u8; 32]).unwrap();
        let nonces = Nonces::default();
        let frame = b"\xff\xff\xff\xff\xff\xff\x02\x00\x00\x00\x00\x01 hello, plaintext".to_vec();
        let d = seal(&k, &nonces, 4097, &frame).unwrap();
        assert_eq!(d.len(), frame.len() + OVERHEAD);
        assert_eq!(vni_of(&d), Some(4097));
        assert!(
            !d.windows(9).any(|w| w == b"plaintext"),
            "no plaintext on the wire"
        );
        assert_eq!(open(&k, &d).as_deref(), Some(&frame[..]));
        assert_eq!(open(&other, &d), None, "another key");
        let mut tampered = d.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(open(&k, &tampered), None, "a changed byte");
        let mut moved = d.clone();
        moved[..4].copy_from_slice(&4098u32.to_be_bytes());
        assert_eq!(open(&k, &moved), None, "the VNI is authenticated");
        // Two seals of one frame differ (a nonce each).
        assert_ne!(seal(&k, &nonces, 4097, &frame), Some(d));
    }
}
