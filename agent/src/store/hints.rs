//! Wake-up hints for the leader's loops, kept by every task write.
//!
//! With 100k tasks the reconciler cannot look at every task after every
//! commit, nor can 1,000 long-polling nodes each walk their tasks on every
//! commit. So the state notes, as it applies, which services changed in a
//! way the orchestrator acts on, and counts per node the changes to its
//! tasks. The reconciler takes the dirty services and looks at those only;
//! a long poll recomputes its node's fingerprint only when the node's count
//! moved.
//!
//! Hints are local to this manager, derived, never persisted nor
//! replicated, and ignored when states are compared: they only let work be
//! skipped that would decide nothing; they never make a decision. Anything
//! that cannot say precisely what it touched marks everything.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::services::ServiceId;
use super::types::NodeId;

#[derive(Debug, Default)]
struct Inner {
    dirty: BTreeSet<ServiceId>,
    everything: bool,
    node_epochs: HashMap<NodeId, u64>,
    /// Changes that concern every node (secrets, configs, node removals).
    epoch: u64,
    /// Nodes whose long polls to wake once the batch being applied is
    /// visible (see `raft::StateWriter::set_applied`).
    touched: BTreeSet<NodeId>,
    touched_all: bool,
}

/// See the module docs. Interior mutability: the reconciler takes the dirty
/// set while it holds the state's read lock (so no apply can slip in
/// between), and a lock held for a few map operations is cheaper than a
/// channel per write.
#[derive(Debug)]
pub struct Hints {
    inner: Mutex<Inner>,
}

impl Default for Hints {
    /// A new state (or one restored from disk) has not been looked at.
    fn default() -> Self {
        Hints {
            inner: Mutex::new(Inner {
                everything: true,
                touched_all: true,
                ..Inner::default()
            }),
        }
    }
}

impl Clone for Hints {
    /// A copy of the state has not been looked at either.
    fn clone(&self) -> Self {
        Hints::default()
    }
}

impl PartialEq for Hints {
    /// Not part of the state's value.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What changed since the reconciler last looked.
#[derive(Debug, Default, PartialEq)]
pub struct Dirty {
    pub everything: bool,
    pub services: BTreeSet<ServiceId>,
}

/// Where a node's assignments stand: when neither number moved, its
/// fingerprint has not changed.
pub type NodeEpoch = (u64, u64);

impl Hints {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Poisoned only by a panic between two map operations: the hints
        // are then at worst incomplete, and `everything` repairs that.
        self.inner.lock().unwrap_or_else(|p| {
            let mut g = p.into_inner();
            g.everything = true;
            g.epoch += 1;
            g.touched_all = true;
            g
        })
    }

    pub fn service(&self, id: &ServiceId) {
        let mut g = self.lock();
        if !g.everything {
            g.dirty.insert(id.clone());
        }
    }

    pub fn everything(&self) {
        let mut g = self.lock();
        g.everything = true;
        g.dirty.clear();
    }

    /// A task on `node` changed (or arrived, or left).
    pub fn node(&self, node: &NodeId) {
        let mut g = self.lock();
        *g.node_epochs.entry(node.clone()).or_default() += 1;
        if !g.touched_all {
            g.touched.insert(node.clone());
        }
    }

    /// Something every node's assignments may refer to changed.
    pub fn all_nodes(&self) {
        let mut g = self.lock();
        g.epoch += 1;
        g.touched_all = true;
        g.touched.clear();
    }

    /// The nodes touched since the last call (`None`: maybe all of them).
    pub fn take_touched(&self) -> Option<BTreeSet<NodeId>> {
        let mut g = self.lock();
        let all = std::mem::take(&mut g.touched_all);
        let nodes = std::mem::take(&mut g.touched);
        (!all).then_some(nodes)
    }

    pub fn take_dirty(&self) -> Dirty {
        let mut g = self.lock();
        Dirty {
            everything: std::mem::take(&mut g.everything),
            services: std::mem::take(&mut g.dirty),
        }
    }

    pub fn node_epoch(&self, node: &NodeId) -> NodeEpoch {
        let g = self.lock();
        (g.epoch, g.node_epochs.get(node).copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_services_are_taken_once_and_everything_covers_them() {
        let h = Hints::default();
        assert!(h.take_dirty().everything, "a new state is all unseen");
        assert_eq!(h.take_dirty(), Dirty::default());
        h.service(&ServiceId("a".into()));
        h.service(&ServiceId("b".into()));
        let d = h.take_dirty();
        assert!(!d.everything);
        assert_eq!(d.services.len(), 2);
        h.service(&ServiceId("a".into()));
        h.everything();
        h.service(&ServiceId("c".into()));
        assert_eq!(
            h.take_dirty(),
            Dirty {
                everything: true,
                services: BTreeSet::new()
            }
        );
    }

    #[test]
    fn node_epochs_move_per_node_and_all_together() {
        let h = Hints::default();
        let (a, b) = (NodeId("a".into()), NodeId("b".into()));
        let (a0, b0) = (h.node_epoch(&a), h.node_epoch(&b));
        h.node(&a);
        assert_ne!(h.node_epoch(&a), a0);
        assert_eq!(h.node_epoch(&b), b0);
        let b1 = h.node_epoch(&b);
        assert_eq!(h.take_touched(), None, "a new state may concern anyone");
        h.node(&a);
        assert_eq!(h.take_touched(), Some(BTreeSet::from([a.clone()])));
        assert_eq!(h.take_touched(), Some(BTreeSet::new()));
        h.all_nodes();
        assert_ne!(h.node_epoch(&b), b1);
        assert_eq!(h.take_touched(), None);
    }
}
