//! Counts the librespot sessions something still holds (`sessions_alive` on the status page).
//!
//! librespot keeps its `Weak<SessionInternal>` private, so each session carries a
//! [`SessionToken`] held by everything of ours that keeps the session: its handle, its Spirc task
//! and, after an abort, the dealer close that follows. A registry of weak references to those
//! tokens tells how many sessions are not yet released; 1 while connected, or something leaks.

use std::sync::Weak;

use super::session::SessionToken;

#[derive(Default)]
pub struct SessionRegistry {
    tokens: Vec<Weak<SessionToken>>,
}

impl SessionRegistry {
    pub fn register(&mut self, token: Weak<SessionToken>) {
        self.tokens.retain(|t| t.strong_count() > 0);
        self.tokens.push(token);
    }

    /// Sessions still held; forgets the released ones.
    pub fn alive(&mut self) -> u32 {
        self.tokens.retain(|t| t.strong_count() > 0);
        u32::try_from(self.tokens.len()).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_only_held_tokens() {
        let mut registry = SessionRegistry::default();
        let a = Arc::new(SessionToken);
        let b = Arc::new(SessionToken);
        registry.register(Arc::downgrade(&a));
        registry.register(Arc::downgrade(&b));
        assert_eq!(registry.alive(), 2);
        drop(a);
        assert_eq!(registry.alive(), 1);
        drop(b);
        assert_eq!(registry.alive(), 0);
    }
}
