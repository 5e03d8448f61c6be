//! Typed configuration of the all-in-one node (owned by the platform module).
