//! What the rules report as it happens, to whoever counts it (the server's
//! metrics). The rules hold an `Arc<dyn Events>` handed to them at wiring
//! time; they never reach into a request or a global to report.

/// Things the rules report.
pub trait Events: Send + Sync {
    /// An account was locked after repeated failures.
    fn account_locked(&self);
}

/// Reports nowhere (the CLI, tests of the rules).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEvents;

impl Events for NoEvents {
    fn account_locked(&self) {}
}
