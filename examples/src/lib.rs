//! Runnable templates for integrators: see the `examples` targets of this package.
