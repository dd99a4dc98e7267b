//! How long operations report progress: the domain says how far it got, the binary decides
//! how to show it (a bar on a terminal, log lines under systemd, nothing with `-q`).

/// One operation's progress, in bytes.
pub trait Progress: Send + Sync {
    fn set_total(&self, total: u64);
    fn add(&self, n: u64);
    fn set(&self, done: u64);
    fn finish(&self);
}

/// Starts a [`Progress`] for each long operation.
pub trait Reporter: Send + Sync {
    fn start(&self, what: String, total: u64) -> Box<dyn Progress>;
}

/// Shows nothing.
pub struct Silent;

impl Progress for Silent {
    fn set_total(&self, _: u64) {}
    fn add(&self, _: u64) {}
    fn set(&self, _: u64) {}
    fn finish(&self) {}
}

impl Reporter for Silent {
    fn start(&self, _: String, _: u64) -> Box<dyn Progress> {
        Box::new(Silent)
    }
}
