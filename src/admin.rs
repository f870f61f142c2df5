//! Operator and tooling access to a deployment, beside the worker itself:
//! the connection and topology calls that `setup`, `status`, the load
//! generator, the benchmark and the tests use, and the store's read side.
//! Everything here goes through the same connection code as the worker.

pub use crate::broker::{
    ConnectError, Declared, Message, PublishError, Publisher, TopologyError, connect,
    consumed_queues, declare_topology, declare_topology_on, delete_topology, is_not_found,
    node_order, partition_queues,
};
pub use crate::store::{Commit, Store, StoreError, Summary, Transaction};
pub use crate::worker::{Committed, decide_and_commit, decide_and_commit_all};
