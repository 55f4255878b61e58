use super::*;
use crate::manager::orchestrator::tests::{converge, node, run_all, service, state_with};
use crate::store::{
    Availability, Command, IpamPool, Network, NetworkSpec, NodeStatusUpdate, Service, ServiceId,
};
use bollard_stubs::models as m;

fn network(id: &str, ingress: bool) -> Network {
    Network {
        id: NetworkId(id.into()),
        version: 0,
        created_at: String::new(),
        updated_at: String::new(),
        spec: NetworkSpec {
            name: id.into(),
            driver: "overlay".into(),
            ingress,
            ..Default::default()
        },
        pool: IpamPool::default(),
        vni: 0,
        node_addrs: Default::default(),
        key: None,
    }
}

fn on_network(mut s: Service, net: &str, alias: &str) -> Service {
    let t = s.spec.task_template.as_mut().unwrap();
    t.networks = Some(vec![m::NetworkAttachmentConfig {
        target: Some(net.into()),
        aliases: Some(vec![alias.into()]),
        ..Default::default()
    }]);
    s
}

fn publishing(mut s: Service, published: i64, target: i64) -> Service {
    s.spec.endpoint_spec = Some(m::EndpointSpec {
        ports: Some(vec![m::EndpointPortConfig {
            target_port: Some(target),
            published_port: Some(published),
            ..Default::default()
        }]),
        ..Default::default()
    });
    s
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        "2026-01-01T00:01:00Z",
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

/// Three nodes, an overlay `back` and ingress; `web` (2 replicas) on
/// `back`, `front` publishing 8080 through the mesh.
fn swarm() -> State {
    let nodes: Vec<_> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut n = node(id, NodeState::Ready, Availability::Active);
            n.status.addr = format!("192.0.2.{}", i + 1);
            n
        })
        .collect();
    let mut st = state_with(&nodes, &[]);
    let mut index = 10;
    for n in [network("ing", true), network("back", false)] {
        index += 1;
        let r = st.apply(index, &Command::CreateNetwork { network: n });
        assert!(r.error.is_none(), "{r:?}");
    }
    for s in [
        on_network(service("web", Some(2)), "back", "www"),
        publishing(service("front", Some(1)), 8080, 80),
    ] {
        index += 1;
        let r = st.apply(index, &Command::CreateService { service: s });
        assert!(r.error.is_none(), "{r:?}");
    }
    converge(&mut st, now(), 10);
    run_all(&mut st);
    st
}

fn entry<'a>(v: &'a [NetworkView], net: &str, svc: &str) -> &'a ServiceEntry {
    v.iter()
        .find(|n| n.id == net)
        .and_then(|n| n.services.iter().find(|s| s.name == svc))
        .unwrap_or_else(|| panic!("no {svc} on {net} in {v:#?}"))
}

#[test]
fn nodes_see_the_networks_of_their_tasks_and_the_mesh() {
    let st = swarm();
    let web_nodes: BTreeSet<NodeId> = st
        .tasks
        .values()
        .filter(|t| t.service_id.0 == "web")
        .filter_map(|t| t.node_id.clone())
        .collect();
    assert_eq!(web_nodes.len(), 2, "spread over two nodes");
    for id in ["a", "b", "c"] {
        let id = NodeId(id.into());
        let v = views(&st, &id);
        // Every node serves the mesh, from its own ingress address.
        let ing = v.iter().find(|n| n.ingress).expect("ingress");
        assert!(ing.node_addr.is_some());
        assert_eq!(ing.peers.len(), 2, "the other nodes");
        let front = entry(&v, "ing", "front");
        assert_eq!(front.ports.len(), 1);
        assert_eq!(
            (front.ports[0].published, front.ports[0].target),
            (8080, 80)
        );
        assert_eq!(front.backends.len(), 1);
        // The overlay only where a web task runs; its peers are the
        // other web node.
        let back = v.iter().find(|n| n.id == "back");
        assert_eq!(back.is_some(), web_nodes.contains(&id), "{v:#?}");
        if let Some(back) = back {
            assert_eq!(back.peers.len(), 1);
            let web = entry(&v, "back", "web");
            assert_eq!(web.aliases, vec!["www".to_string()]);
            assert_eq!(web.backends.len(), 2);
            let vip = web.vip.expect("a virtual IP");
            assert!(!web.backends.contains(&vip));
        }
    }
    // Addresses are unique per network: 2 tasks + 1 VIP on back; on
    // ingress 3 nodes + front's VIP + its task.
    assert_eq!(st.task_index.addrs.count(&NetworkId("back".into())), 3);
    assert_eq!(st.task_index.addrs.count(&NetworkId("ing".into())), 5);
}

#[test]
fn a_down_node_stops_being_a_peer_and_its_tasks_stop_being_backends() {
    let mut st = swarm();
    let web_node = st
        .tasks
        .values()
        .find(|t| t.service_id.0 == "web")
        .and_then(|t| t.node_id.clone())
        .unwrap();
    let other = ["a", "b", "c"]
        .iter()
        .map(|n| NodeId(n.to_string()))
        .find(|n| *n != web_node)
        .unwrap();
    st.apply(
        20_000,
        &Command::SetNodeStatus {
            updates: vec![NodeStatusUpdate {
                id: web_node.clone(),
                state: Some(NodeState::Down),
                message: None,
                addr: None,
                reachability: None,
                description: None,
            }],
            now: String::new(),
        },
    );
    let v = views(&st, &other);
    let ing = v.iter().find(|n| n.ingress).unwrap();
    assert_eq!(ing.peers.len(), 1, "the down node is no peer");
    if v.iter().any(|n| n.id == "back") {
        assert_eq!(entry(&v, "back", "web").backends.len(), 1);
    }
}

#[test]
fn ingress_ports_are_chosen_and_never_shared() {
    let mut st = swarm();
    let r = st.apply(
        30_000,
        &Command::CreateService {
            service: publishing(service("again", Some(1)), 8080, 81),
        },
    );
    let e = r.error.expect("refused");
    assert!(
        e.message
            .contains("port '8080' is already in use by service front"),
        "{e}"
    );
    let r = st.apply(
        30_001,
        &Command::CreateService {
            service: publishing(service("dyn", Some(1)), 0, 81),
        },
    );
    assert!(r.error.is_none(), "{r:?}");
    let dynamic = &st.services[&ServiceId("dyn".into())].endpoint.ports[0];
    assert_eq!(dynamic.published_port, Some(30000));
    // Removing a service gives its virtual IPs back at once, its tasks'
    // addresses once they have ended.
    let before = st.task_index.addrs.count(&NetworkId("back".into()));
    st.apply(
        30_002,
        &Command::RemoveService {
            id: ServiceId("web".into()),
            now: String::new(),
        },
    );
    assert_eq!(
        st.task_index.addrs.count(&NetworkId("back".into())),
        before - 1
    );
    // A state rebuilt from its rows holds the same addresses.
    let again = State::from_rows(st.rows()).unwrap();
    assert_eq!(again.task_index.addrs, st.task_index.addrs);
}
