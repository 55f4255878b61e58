use super::*;
use crate::store::networks::NetworkSpec;

fn network(id: &str, subnet: &str, range: &str) -> Network {
    Network {
        id: NetworkId(id.into()),
        version: 1,
        created_at: String::new(),
        updated_at: String::new(),
        spec: NetworkSpec {
            name: id.into(),
            driver: "overlay".into(),
            ..Default::default()
        },
        pool: crate::store::IpamPool {
            subnet: subnet.into(),
            gateway: String::new(),
            ip_range: range.into(),
        },
        vni: 4096,
        node_addrs: BTreeMap::new(),
        key: None,
    }
}

#[test]
fn addresses_skip_network_gateway_and_broadcast_and_come_back() {
    let mut n = network("n", "10.0.9.0/29", "");
    n.pool.gateway = "10.0.9.1".into();
    let mut ix = AddrIndex::default();
    let got: Vec<String> = (0..5)
        .map(|_| ix.allocate(&n).unwrap().addr.to_string())
        .collect();
    assert_eq!(
        got,
        ["10.0.9.2", "10.0.9.3", "10.0.9.4", "10.0.9.5", "10.0.9.6"]
    );
    let e = ix.allocate(&n).unwrap_err();
    assert!(
        e.message.contains("no free address left in 10.0.9.0/29"),
        "{e}"
    );
    ix.release(&NetAddr {
        network: n.id.clone(),
        addr: "10.0.9.4".parse().unwrap(),
    });
    assert_eq!(ix.allocate(&n).unwrap().addr.to_string(), "10.0.9.4");
    assert_eq!(ix.count(&n.id), 5);
}

#[test]
fn an_ip_range_bounds_the_addresses() {
    let n = network("n", "10.0.9.0/24", "10.0.9.128/29");
    let mut ix = AddrIndex::default();
    let got: Vec<String> = (0..8)
        .map(|_| ix.allocate(&n).unwrap().addr.to_string())
        .collect();
    assert_eq!(got.first().map(String::as_str), Some("10.0.9.128"));
    assert_eq!(got.last().map(String::as_str), Some("10.0.9.135"));
    assert!(ix.allocate(&n).is_err());
}
