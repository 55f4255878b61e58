//! Swarm events (`docker events`): what a committed command did to the
//! cluster's objects, as Docker reports it (type, action, the object's ID
//! and name). Described from the state before the command (the name of
//! what it removes, a node's state before it changes) and kept only if the
//! command succeeded. Pure; each manager emits its own as it applies
//! (`raft::EventLog`), stamped with the time it applied them.

use std::collections::BTreeMap;

use serde::Serialize;

use super::state::State;
use super::types::{Command, NodeState, Response};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// "service", "node", "secret", "config", "network".
    pub kind: &'static str,
    /// "create", "update", "remove".
    pub action: &'static str,
    pub id: String,
    pub attributes: BTreeMap<String, String>,
    /// Unix time in nanoseconds, set when emitted.
    pub time_nano: i128,
}

fn event(kind: &'static str, action: &'static str, id: &str, name: &str) -> Event {
    let mut attributes = BTreeMap::new();
    if !name.is_empty() {
        attributes.insert("name".to_string(), name.to_string());
    }
    Event {
        kind,
        action,
        id: id.to_string(),
        attributes,
        time_nano: 0,
    }
}

/// A command's events, before it is applied.
#[derive(Debug)]
pub enum Described {
    One(Vec<Event>),
    Batch(Vec<Described>),
}

fn node_name(state: &State, id: &super::NodeId) -> String {
    state
        .nodes
        .get(id)
        .map(|n| {
            if n.spec.name.is_empty() {
                n.description.hostname.clone()
            } else {
                n.spec.name.clone()
            }
        })
        .unwrap_or_default()
}

/// A service update event for a change of its update state (none if the
/// state stays).
fn update_state_event(
    state: &State,
    id: &super::ServiceId,
    new: Option<super::UpdateState>,
) -> Option<Event> {
    let s = state.services.get(id)?;
    let old = s.update_status.as_ref().map(|u| u.state);
    if old == new {
        return None;
    }
    let mut e = event("service", "update", &id.0, s.name());
    let name = |x: Option<super::UpdateState>| x.map_or("", |x| x.as_str()).to_string();
    e.attributes.insert("updatestate.old".into(), name(old));
    e.attributes.insert("updatestate.new".into(), name(new));
    Some(e)
}

pub fn describe(state: &State, cmd: &Command) -> Described {
    let one = |v: Vec<Event>| Described::One(v);
    match cmd {
        Command::Batch(cmds) => Described::Batch(cmds.iter().map(|c| describe(state, c)).collect()),
        Command::CreateService { service } => one(vec![event(
            "service",
            "create",
            &service.id.0,
            service.name(),
        )]),
        Command::UpdateService { id, spec, .. } => one(vec![event(
            "service",
            "update",
            &id.0,
            spec.name.as_deref().unwrap_or_default(),
        )]),
        // Docker's service events carry the update state's change.
        Command::SetUpdateStatus { id, status, .. } => {
            let new = status.as_ref().map(|s| s.state);
            one(update_state_event(state, id, new).into_iter().collect())
        }
        Command::RollbackService { id, .. } => {
            one(
                update_state_event(state, id, Some(super::UpdateState::RollbackStarted))
                    .into_iter()
                    .collect(),
            )
        }
        Command::RemoveService { id, .. } => {
            let name = state.services.get(id).map(|s| s.name()).unwrap_or_default();
            one(vec![event("service", "remove", &id.0, name)])
        }
        Command::InitCluster { node, .. } | Command::AddNode { node } => one(vec![event(
            "node",
            "create",
            &node.id.0,
            &node.description.hostname,
        )]),
        Command::UpdateNodeSpec { id, .. } | Command::SetNodeRole { id, .. } => {
            one(vec![event("node", "update", &id.0, &node_name(state, id))])
        }
        Command::SetNodeStatus { updates, .. } => one(updates
            .iter()
            .filter_map(|u| {
                let old = state.nodes.get(&u.id)?.status.state;
                let new = u.state.filter(|s| *s != old)?;
                let mut e = event("node", "update", &u.id.0, &node_name(state, &u.id));
                e.attributes
                    .insert("state.old".into(), state_name(old).into());
                e.attributes
                    .insert("state.new".into(), state_name(new).into());
                Some(e)
            })
            .collect()),
        Command::RemoveNode { id } => {
            one(vec![event("node", "remove", &id.0, &node_name(state, id))])
        }
        Command::CreateSecret { secret } => one(vec![event(
            "secret",
            "create",
            &secret.id.0,
            &secret.spec.name,
        )]),
        Command::UpdateSecret { id, .. } => {
            let name = state
                .secrets
                .get(id)
                .map(|s| s.spec.name.as_str())
                .unwrap_or_default();
            one(vec![event("secret", "update", &id.0, name)])
        }
        Command::RemoveSecret { id } => {
            let name = state
                .secrets
                .get(id)
                .map(|s| s.spec.name.as_str())
                .unwrap_or_default();
            one(vec![event("secret", "remove", &id.0, name)])
        }
        Command::CreateConfig { config } => one(vec![event(
            "config",
            "create",
            &config.id.0,
            &config.spec.name,
        )]),
        Command::UpdateConfig { id, .. } => {
            let name = state
                .configs
                .get(id)
                .map(|s| s.spec.name.as_str())
                .unwrap_or_default();
            one(vec![event("config", "update", &id.0, name)])
        }
        Command::RemoveConfig { id } => {
            let name = state
                .configs
                .get(id)
                .map(|s| s.spec.name.as_str())
                .unwrap_or_default();
            one(vec![event("config", "remove", &id.0, name)])
        }
        Command::CreateNetwork { network } => one(vec![event(
            "network",
            "create",
            &network.id.0,
            &network.spec.name,
        )]),
        Command::RemoveNetwork { id } => {
            let name = state
                .networks
                .get(id)
                .map(|n| n.spec.name.as_str())
                .unwrap_or_default();
            one(vec![event("network", "remove", &id.0, name)])
        }
        _ => one(Vec::new()),
    }
}

fn state_name(s: NodeState) -> &'static str {
    s.as_str()
}

/// The events of what succeeded.
pub fn emitted(d: Described, r: &Response) -> Vec<Event> {
    match d {
        Described::One(v) if r.error.is_none() => v,
        Described::One(_) => Vec::new(),
        Described::Batch(ds) => ds
            .into_iter()
            .zip(&r.batch)
            .flat_map(|(d, r)| emitted(d, r))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ServiceId, State};

    #[test]
    fn a_removal_names_what_it_removed_and_a_failure_emits_nothing() {
        let mut st = State::default();
        let mut svc = crate::manager::orchestrator::tests::service("s1", Some(1));
        svc.spec.name = Some("web".into());
        st.services.insert(svc.id.clone(), svc);
        let rm = Command::RemoveService {
            id: ServiceId("s1".into()),
            now: String::new(),
        };
        let d = describe(&st, &rm);
        let r = st.apply(5, &rm);
        let ev = emitted(d, &r);
        assert_eq!(ev.len(), 1);
        assert_eq!(
            (ev[0].kind, ev[0].action, ev[0].id.as_str()),
            ("service", "remove", "s1")
        );
        assert_eq!(ev[0].attributes["name"], "web");
        // Again: not found, so no event.
        let d = describe(&st, &rm);
        let r = st.apply(6, &rm);
        assert!(r.error.is_some());
        assert!(emitted(d, &r).is_empty());
    }
}
