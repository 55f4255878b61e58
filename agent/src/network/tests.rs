use std::net::Ipv4Addr;

use super::ipam::{Allocations, Subnet};
use super::{files, rules, NetError, PortMapping, Protocol};

fn sub(s: &str) -> Subnet {
    Subnet::parse(s).expect("subnet")
}

#[test]
fn subnets_parse_and_refuse_nonsense() {
    let s = sub("10.213.0.0/16");
    assert_eq!(s.gateway(), Ipv4Addr::new(10, 213, 0, 1));
    assert!(s.contains(Ipv4Addr::new(10, 213, 255, 254)));
    assert!(!s.contains(Ipv4Addr::new(10, 214, 0, 1)));
    for bad in [
        "10.213.0.0",
        "10.213.0.1/16",
        "10.213.0.0/31",
        "nope/16",
        "10.0.0.0/4",
    ] {
        assert!(Subnet::parse(bad).is_err(), "{bad}");
    }
    let e = Subnet::parse("10.213.0.1/16").unwrap_err().to_string();
    assert!(e.contains("10.213.0.0/16"), "{e}");
}

#[test]
fn allocator_skips_gateway_reuses_and_releases() {
    let s = sub("10.1.2.0/29"); // .2 to .6 for tasks
    let mut a = Allocations::default();
    let first = a.allocate(&s, "t1").expect("t1");
    assert_eq!(first, Ipv4Addr::new(10, 1, 2, 2));
    // Same task, same address (idempotent attach).
    assert_eq!(a.allocate(&s, "t1").expect("t1 again"), first);
    let second = a.allocate(&s, "t2").expect("t2");
    assert_ne!(first, second);
    for t in ["t3", "t4", "t5"] {
        a.allocate(&s, t).expect("room");
    }
    // .7 is the broadcast address: full.
    assert!(matches!(a.allocate(&s, "t6"), Err(NetError::Exhausted(_))));
    assert!(a.release("t1"));
    assert!(!a.release("t1"));
    assert_eq!(a.allocate(&s, "t6").expect("freed"), first);
}

#[test]
fn allocations_survive_a_round_trip_and_forget_other_subnets() {
    let s = sub("10.1.2.0/24");
    let mut a = Allocations::default();
    a.allocate(&s, "t1").expect("t1");
    let json = serde_json::to_string(&a).expect("encode");
    let mut back: Allocations = serde_json::from_str(&json).expect("decode");
    assert_eq!(back, a);
    // Restarted with another subnet: old entries do not block new ones.
    let other = sub("10.9.0.0/24");
    assert_eq!(
        back.allocate(&other, "t2").expect("t2"),
        Ipv4Addr::new(10, 9, 0, 2)
    );
    assert_eq!(back.get("t1"), None);
}

fn port(p: u16, t: u16) -> PortMapping {
    PortMapping {
        protocol: Protocol::Tcp,
        published: p,
        target: t,
    }
}

#[test]
fn dnat_rules_are_built_and_parsed_back() {
    let ip = Ipv4Addr::new(10, 213, 0, 2);
    let rule = rules::dnat_rule(
        "abc",
        Some(Ipv4Addr::new(127, 20, 0, 1)),
        &port(8080, 80),
        ip,
    );
    assert_eq!(
        rule.join(" "),
        "-d 127.20.0.1/32 -p tcp -m tcp --dport 8080 -m comment --comment task=abc -j DNAT --to-destination 10.213.0.2:80"
    );
    // As `iptables -S` prints it (nft backend).
    let listed = "-N APY-DNAT-apiary0\n\
        -A APY-DNAT-apiary0 -d 127.20.0.1/32 -p tcp -m tcp --dport 8080 -m comment --comment task=abc -j DNAT --to-destination 10.213.0.2:80\n\
        -A APY-DNAT-apiary0 -p udp -m udp --dport 53 -m comment --comment \"task=def\" -j DNAT --to-destination 10.213.0.3:53\n\
        -A OTHER -p tcp --dport 1 -j ACCEPT\n";
    let parsed = rules::parse_dnat(listed, "APY-DNAT-apiary0");
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].task.as_deref(), Some("abc"));
    assert_eq!(parsed[0].port, Some(8080));
    assert_eq!(parsed[0].protocol, Some(Protocol::Tcp));
    assert_eq!(parsed[0].spec, rule);
    assert_eq!(parsed[1].task.as_deref(), Some("def"));
    assert_eq!(parsed[1].protocol, Some(Protocol::Udp));
    // Clashes: same port and protocol on the same (or every) address.
    let h1 = Some(Ipv4Addr::new(127, 20, 0, 1));
    let h2 = Some(Ipv4Addr::new(127, 20, 0, 2));
    assert!(rules::clashes(&parsed[0], h1, &port(8080, 81)));
    assert!(rules::clashes(&parsed[0], None, &port(8080, 81)));
    assert!(!rules::clashes(&parsed[0], h2, &port(8080, 81)));
    assert!(!rules::clashes(&parsed[0], h1, &port(8081, 80)));
    assert!(rules::clashes(
        &parsed[1],
        h2,
        &PortMapping {
            protocol: Protocol::Udp,
            published: 53,
            target: 1
        }
    ));
}

#[test]
fn base_rules_nat_the_subnet_and_jump_from_builtin_chains() {
    let r = rules::base_rules("apiary0", &sub("10.213.0.0/16"));
    let text: Vec<String> = r
        .iter()
        .map(|(t, c, s)| format!("{t} {c} {}", s.join(" ")))
        .collect();
    assert!(
        text.contains(
            &"nat APY-POST-apiary0 -s 10.213.0.0/16 ! -o apiary0 -j MASQUERADE".to_string()
        ),
        "{text:#?}"
    );
    assert!(
        text.contains(&"nat OUTPUT -m addrtype --dst-type LOCAL -j APY-DNAT-apiary0".to_string())
    );
    assert!(text
        .contains(&"nat PREROUTING -m addrtype --dst-type LOCAL -j APY-DNAT-apiary0".to_string()));
    assert!(text.contains(&"filter FORWARD -j APY-FWD-apiary0".to_string()));
    // Chain names fit iptables' 28 characters with the longest bridge name.
    for (_, c) in rules::chains("abcdefghijklmno") {
        assert!(c.len() <= 28, "{c}");
    }
}

#[test]
fn resolv_conf_drops_loopback_servers() {
    let host = "search example.org\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\noptions edns0\n";
    assert_eq!(
        files::resolv_conf(host),
        "search example.org\nnameserver 10.255.255.53\noptions edns0\n"
    );
    assert!(files::has_reachable_nameserver(host));
    let only_local = "nameserver 127.0.0.53\n";
    assert!(!files::has_reachable_nameserver(only_local));
    assert_eq!(
        files::resolv_conf(only_local),
        "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    );
}

#[test]
fn hosts_names_the_task() {
    let h = files::hosts("abc123", Some(Ipv4Addr::new(10, 213, 0, 2)));
    assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
    assert!(h.ends_with("10.213.0.2\tabc123\n"));
}

#[test]
fn veth_names_fit_and_are_stable() {
    let a = super::bridge::veth_name("apiary0", "x7k2m9q4w8e1r5t3y6u0i2o4p");
    assert_eq!(a.len(), 15);
    assert_eq!(
        a,
        super::bridge::veth_name("apiary0", "x7k2m9q4w8e1r5t3y6u0i2o4p")
    );
    assert_ne!(
        a,
        super::bridge::veth_name("apiary1", "x7k2m9q4w8e1r5t3y6u0i2o4p")
    );
}

#[tokio::test]
async fn host_network_refuses_remapped_ports() {
    let n = super::HostNetwork::unchecked();
    let r = super::Network::publish(&n, "t", &[port(8080, 80)]).await;
    assert!(matches!(r, Err(NetError::Unsupported(_))), "{r:?}");
}

fn live(tasks: &[&str]) -> std::collections::HashSet<String> {
    tasks.iter().map(|t| t.to_string()).collect()
}

fn dnat(task: &str, port: u16) -> rules::DnatRule {
    let spec = rules::dnat_rule(task, None, &port_udp(port), Ipv4Addr::new(10, 213, 0, 9));
    let line = format!("-A APY-DNAT-apiary0 {}", spec.join(" "));
    rules::parse_dnat(&line, "APY-DNAT-apiary0").remove(0)
}

fn port_udp(p: u16) -> PortMapping {
    PortMapping {
        protocol: Protocol::Udp,
        published: p,
        target: p,
    }
}

#[test]
fn task_ids_never_blur_into_bridge_names() {
    use super::sweep::task_of_netns;
    assert_eq!(task_of_netns("apiary0", "apiary0-x7k2m9"), Some("x7k2m9"));
    // With the owner tag: another agent's namespaces on a bridge of the
    // same name are not ours.
    let ours = super::bridge::netns_prefix("apiary0", "0a1b2c3d");
    assert_eq!(
        task_of_netns(&ours, "apiary0-0a1b2c3d-x7k2m9"),
        Some("x7k2m9")
    );
    assert_eq!(task_of_netns(&ours, "apiary0-99999999-x7k2m9"), None);
    assert_eq!(task_of_netns(&ours, "apiary0-x7k2m9"), None);
    // Another agent's bridge whose name extends ours, either way round.
    assert_eq!(task_of_netns("apiary0", "apiary0-x-x7k2m9"), None);
    assert_eq!(task_of_netns("apiary0-x", "apiary0-x7k2m9"), None);
    assert_eq!(
        task_of_netns("apiary0-x", "apiary0-x-x7k2m9"),
        Some("x7k2m9")
    );
    assert_eq!(task_of_netns("apb1x1", "apb1x10-x7k2m9"), None);
    assert_eq!(task_of_netns("apiary0", "apiary0-"), None);
    assert_eq!(task_of_netns("apiary0", "apiary0"), None);
    assert_eq!(task_of_netns("apiary0", "cni-1234"), None);
    assert!(!super::sweep::is_task_id("a-b"));
    assert!(!super::sweep::is_task_id(".."));
    assert!(!super::sweep::is_task_id("."));
    assert!(super::sweep::is_task_id("a.b"));
    assert!(!super::sweep::is_task_id(&"a".repeat(65)));
}

#[test]
fn sweep_plan_releases_only_what_no_live_task_owns() {
    use super::bridge::veth_name;
    use super::sweep::{plan, Found};
    let s = sub("10.213.0.0/16");
    let mut allocations = Allocations::default();
    for t in ["kept", "gone", "halfmade"] {
        allocations.allocate(&s, t).expect("room");
    }
    let found = Found {
        netns: vec![
            "apiary0-0a1b2c3d-kept".into(),
            "apiary0-0a1b2c3d-gone".into(),
            "apiary0-0a1b2c3d-onlyns".into(),
            // Another agent's with the same bridge name (in a network
            // namespace of its own), one of a bridge apiary0-x, one made
            // before namespaces carried their agent's tag, and someone
            // else's.
            "apiary0-99999999-theirs".into(),
            "apiary0-x-0a1b2c3d-other".into(),
            "apiary0-untagged".into(),
            "cni-1234".into(),
        ],
        ports: vec![
            veth_name("apiary0", "kept"),
            veth_name("apiary0", "gone"),
            // Not one of ours: a port someone added by hand.
            "eth1".into(),
        ],
        dnat: vec![dnat("kept", 53), dnat("gone", 54), dnat("onlyrule", 55)],
        allocations,
        task_dirs: vec!["kept".into(), "gone".into(), "onlydir".into()],
    };
    let p = plan(
        "apiary0",
        "apiary0-0a1b2c3d",
        &found,
        &live(&["kept", "unattached"]),
    );
    assert_eq!(
        p.orphans.iter().map(String::as_str).collect::<Vec<_>>(),
        vec!["gone", "halfmade", "onlydir", "onlyns", "onlyrule"]
    );
    assert_eq!(p.stray_veths, vec![veth_name("apiary0", "gone")]);
    assert_eq!(
        p.live_netns.iter().map(String::as_str).collect::<Vec<_>>(),
        vec!["kept"]
    );
    // Nothing live: everything of ours goes, nothing of anyone else's.
    let all = plan("apiary0", "apiary0-0a1b2c3d", &found, &live(&[]));
    assert!(all.orphans.contains("kept"));
    assert!(!all.orphans.iter().any(|t| t.contains("other")
        || t.contains("theirs")
        || t.contains("untagged")
        || t.contains("cni")));
    assert_eq!(all.stray_veths.len(), 2, "{:?}", all.stray_veths);
}

#[test]
fn sweep_rebuilds_the_address_table_from_live_namespaces() {
    use super::sweep::{parse_inet, reconcile};
    let s = sub("10.213.0.0/24");
    let mut old = Allocations::default();
    old.tasks
        .insert("kept".into(), Ipv4Addr::new(10, 213, 0, 2));
    old.tasks
        .insert("moved".into(), Ipv4Addr::new(10, 213, 0, 3));
    old.tasks
        .insert("gone".into(), Ipv4Addr::new(10, 213, 0, 4));
    let mut seen = std::collections::BTreeMap::new();
    // The table lost one, has another wrong, and one from another subnet.
    seen.insert("lost".to_string(), Ipv4Addr::new(10, 213, 0, 7));
    seen.insert("moved".to_string(), Ipv4Addr::new(10, 213, 0, 8));
    seen.insert("elsewhere".to_string(), Ipv4Addr::new(10, 9, 0, 2));
    let fixed = reconcile(
        &old,
        &s,
        &live(&["kept", "moved", "lost", "elsewhere"]),
        &seen,
    );
    let got: Vec<(String, Ipv4Addr)> = fixed.tasks.into_iter().collect();
    assert_eq!(
        got,
        vec![
            ("kept".to_string(), Ipv4Addr::new(10, 213, 0, 2)),
            ("lost".to_string(), Ipv4Addr::new(10, 213, 0, 7)),
            ("moved".to_string(), Ipv4Addr::new(10, 213, 0, 8)),
        ]
    );
    assert_eq!(
        parse_inet("5: eth0    inet 10.213.0.7/24 brd 10.213.0.255 scope global eth0\\       valid_lft forever preferred_lft forever\n"),
        Some(Ipv4Addr::new(10, 213, 0, 7))
    );
    assert_eq!(parse_inet(""), None);
}

#[test]
fn the_owner_tag_is_drawn_once_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = super::owner::tag(dir.path()).expect("a new tag");
    assert_eq!(a.len(), 8);
    assert!(!a.contains('-'), "{a}: the tag separates bridge and task");
    assert_eq!(super::owner::tag(dir.path()).expect("the same tag"), a);
    std::fs::write(dir.path().join("owner"), "not-a-tag\n").expect("spoil the tag");
    let e = super::owner::tag(dir.path()).expect_err("a spoilt tag is refused");
    assert!(e.to_string().contains("owner"), "{e}");
    assert!(e.to_string().contains("not-a-tag"), "{e}");
}

#[test]
fn one_agent_per_bridge_and_network_namespace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let held = super::owner::lock_bridge_in(dir.path(), "apiary0").expect("the first takes it");
    let e = super::owner::lock_bridge_in(dir.path(), "apiary0").expect_err("taken");
    assert!(
        e.to_string()
            .contains("already uses the task bridge apiary0")
            && e.to_string().contains("--bridge-name"),
        "{e}"
    );
    // Another bridge in the same namespace is free.
    let _other = super::owner::lock_bridge_in(dir.path(), "apiary1").expect("another bridge");
    drop(held);
    super::owner::lock_bridge_in(dir.path(), "apiary0").expect("free once its holder is gone");
}

#[tokio::test]
async fn links_are_read_in_the_agents_own_namespace() {
    let links = super::links::Links::open().expect("a netlink socket");
    assert!(links.exists("lo").await.expect("ask for lo"));
    assert!(!links
        .exists("apynosuchlink0")
        .await
        .expect("ask for a missing link"));
    assert!(links
        .ports("apynosuchlink0")
        .await
        .expect("ports of a missing bridge")
        .is_empty());
}
