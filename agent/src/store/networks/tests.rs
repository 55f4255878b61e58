use super::*;
use crate::store::{Command, NetworkSpec};

fn spec(name: &str, subnet: &str) -> NetworkSpec {
    NetworkSpec {
        name: name.into(),
        driver: "overlay".into(),
        ipam: if subnet.is_empty() {
            vec![]
        } else {
            vec![IpamPool {
                subnet: subnet.into(),
                ..Default::default()
            }]
        },
        ..Default::default()
    }
}

fn net(id: &str, spec: NetworkSpec) -> Network {
    Network {
        id: NetworkId(id.into()),
        version: 0,
        created_at: String::new(),
        updated_at: String::new(),
        spec,
        pool: Default::default(),
        vni: 0,
        node_addrs: Default::default(),
        key: None,
    }
}

fn pool(s: &State, id: &str) -> IpamPool {
    s.networks[&NetworkId(id.into())].pool.clone()
}

fn create(s: &mut State, index: u64, n: Network) -> Result<(), String> {
    let r = s.apply(index, &Command::CreateNetwork { network: n });
    match r.error {
        None => Ok(()),
        Some(e) => Err(e.message),
    }
}

#[test]
fn subnets_come_from_the_pool_in_order_and_never_overlap() {
    let mut s = State::default();
    create(
        &mut s,
        1,
        net(
            "ing",
            NetworkSpec {
                ingress: true,
                ..spec("ingress", "")
            },
        ),
    )
    .expect("ingress");
    create(&mut s, 2, net("a", spec("a", ""))).expect("a");
    // One given by hand, in the middle of the pool: allocation skips it.
    create(&mut s, 3, net("b", spec("b", "10.0.2.0/23"))).expect("b");
    create(&mut s, 4, net("c", spec("c", ""))).expect("c");
    assert_eq!(pool(&s, "ing").subnet, "10.0.0.0/24");
    assert_eq!(pool(&s, "ing").gateway, "10.0.0.1");
    assert_eq!(pool(&s, "a").subnet, "10.0.1.0/24");
    assert_eq!(pool(&s, "b").subnet, "10.0.2.0/23");
    assert_eq!(pool(&s, "c").subnet, "10.0.4.0/24");
    let vnis: Vec<u32> = ["ing", "a", "b", "c"]
        .iter()
        .map(|id| s.networks[&NetworkId(id.to_string())].vni)
        .collect();
    assert_eq!(vnis, vec![4096, 4097, 4098, 4099]);
    // Overlaps are refused, naming the holder.
    let e = create(&mut s, 5, net("d", spec("d", "10.0.3.0/24"))).expect_err("overlap");
    assert!(e.contains("overlaps network b"), "{e}");
    let e = create(&mut s, 6, net("e", spec("e", "10.0.0.0/16"))).expect_err("overlap");
    assert!(e.contains("overlaps"), "{e}");
    // The same name twice is a conflict, as in Docker.
    let e = create(&mut s, 7, net("f", spec("a", ""))).expect_err("name");
    assert_eq!(e, "network with name a already exists");
    // A removed network's subnet and VNI are free again.
    assert!(s
        .apply(
            8,
            &Command::RemoveNetwork {
                id: NetworkId("a".into())
            }
        )
        .error
        .is_none());
    create(&mut s, 9, net("g", spec("g", ""))).expect("g");
    assert_eq!(pool(&s, "g").subnet, "10.0.1.0/24");
    assert_eq!(s.networks[&NetworkId("g".into())].vni, 4097);
}

#[test]
fn a_full_pool_says_so() {
    let pools = vec!["10.9.0.0/23".to_string()];
    let taken = [parse_subnet("10.9.0.0/24").expect("cidr")];
    assert_eq!(
        free_subnet(&pools, 24, &taken)
            .expect("one left")
            .to_string(),
        "10.9.1.0/24"
    );
    let taken = [
        parse_subnet("10.9.0.0/24").expect("cidr"),
        parse_subnet("10.9.1.0/24").expect("cidr"),
    ];
    let e = free_subnet(&pools, 24, &taken).expect_err("full");
    assert!(
        e.contains("no free /24") && e.contains("10.9.0.0/23"),
        "{e}"
    );
    // A second pool is used once the first is full.
    let two = vec!["10.9.0.0/23".to_string(), "192.168.50.0/24".to_string()];
    assert_eq!(
        free_subnet(&two, 26, &taken)
            .expect("the second")
            .to_string(),
        "192.168.50.0/26"
    );
}

#[test]
fn bad_network_input_is_refused_with_a_reason() {
    let s = State::default();
    let check = |sp: NetworkSpec| check_create(&s, &sp).map(drop).map_err(|e| e.message);
    assert!(check(spec("web.net", ""))
        .expect_err("refused")
        .contains("invalid network name"));
    assert!(check(spec("-web", "")).is_err());
    assert!(check(spec(&"a".repeat(64), "")).is_err());
    assert!(check(spec("ok_name-2", "")).is_ok());
    assert!(check(spec("x", "10.1.0.0/33"))
        .expect_err("refused")
        .contains("--subnet"));
    assert!(check(spec("x", "10.1.0.1/24"))
        .expect_err("refused")
        .contains("host bits"));
    let mut gw = spec("x", "10.1.0.0/24");
    gw.ipam[0].gateway = "10.2.0.1".into();
    assert!(check(gw)
        .expect_err("refused")
        .contains("--gateway 10.2.0.1 is not a host address"));
    let mut range = spec("x", "10.1.0.0/24");
    range.ipam[0].ip_range = "10.1.0.128/25".into();
    assert!(check(range).is_ok());
    let mut range = spec("x", "10.1.0.0/24");
    range.ipam[0].ip_range = "10.1.1.0/25".into();
    assert!(check(range).expect_err("refused").contains("not inside"));
    let mut no_subnet = spec("x", "");
    no_subnet.ipam = vec![IpamPool {
        gateway: "10.0.0.1".into(),
        ..Default::default()
    }];
    assert!(check(no_subnet)
        .expect_err("refused")
        .contains("need --subnet"));
    let mut bridge = spec("x", "");
    bridge.driver = "bridge".into();
    assert!(check(bridge)
        .expect_err("refused")
        .contains("use -d overlay"));
    let ingress = NetworkSpec {
        ingress: true,
        attachable: true,
        ..spec("ing", "")
    };
    assert_eq!(
        check(ingress).expect_err("refused"),
        "ingress network cannot be attachable"
    );
}

#[test]
fn address_pool_settings_are_checked_as_docker_does() {
    let ok = AddrPool {
        pools: vec!["10.20.0.0/16".into()],
        subnet_size: 26,
        data_path_port: 7789,
    };
    assert_eq!(ok.validate(), Ok(()));
    let small = AddrPool {
        pools: vec!["10.20.0.0/16".into()],
        subnet_size: 12,
        ..Default::default()
    };
    assert!(small
        .validate()
        .expect_err("refused")
        .contains("mask length"));
    let port = AddrPool {
        data_path_port: 80,
        ..Default::default()
    };
    assert!(port
        .validate()
        .expect_err("refused")
        .contains("1024 to 49151"));
    let overlap = AddrPool {
        pools: vec!["10.20.0.0/16".into(), "10.20.128.0/17".into()],
        ..Default::default()
    };
    assert!(overlap
        .validate()
        .expect_err("refused")
        .contains("overlaps"));
    assert_eq!(AddrPool::default().effective_pools(), vec!["10.0.0.0/8"]);
    assert_eq!(AddrPool::default().effective_subnet_size(), 24);
    assert_eq!(AddrPool::default().effective_data_path_port(), 4789);
}
