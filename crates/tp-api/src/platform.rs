//! Composition of broker + API + storage into one node.
