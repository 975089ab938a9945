//! Closing the data port's connections at shutdown: one signal every connection watches,
//! and a count of the connections still open, to wait for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, watch};

/// The data port's connections, as a whole.
pub struct Connections {
    signal: Arc<Signal>,
    /// Each open connection holds a receiver; the sender sees when the last one is gone.
    count: watch::Sender<()>,
}

#[derive(Default)]
struct Signal {
    closing: AtomicBool,
    notify: Notify,
}

/// One connection's view: whether to close, and a registration in the count.
pub struct Open {
    signal: Arc<Signal>,
    _counted: watch::Receiver<()>,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            signal: Arc::default(),
            count: watch::channel(()).0,
        }
    }
}

impl Connections {
    /// Registers a connection; it counts as open until the returned [`Open`] is dropped.
    pub fn open(&self) -> Open {
        Open {
            signal: self.signal.clone(),
            _counted: self.count.subscribe(),
        }
    }

    /// Asks every connection to close: an idle one closes now, a busy one after its answer.
    pub fn close_all(&self) {
        self.signal.closing.store(true, Ordering::SeqCst);
        self.signal.notify.notify_waiters();
    }

    /// Resolves once no connection is open.
    pub async fn all_closed(&self) {
        self.count.closed().await;
    }
}

impl Open {
    /// Whether the gateway is closing its connections (one atomic load).
    pub fn is_closing(&self) -> bool {
        self.signal.closing.load(Ordering::SeqCst)
    }

    /// Resolves once the gateway closes its connections. Made once per connection and kept
    /// pinned, so it registers once, not once a request.
    pub async fn closing(&self) {
        let notified = self.signal.notify.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if self.is_closing() {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn connections_are_told_to_close_and_counted_until_gone() {
        let connections = Connections::default();
        tokio::time::timeout(Duration::from_secs(1), connections.all_closed())
            .await
            .expect("nothing open: closed at once");

        let open = connections.open();
        let waiting = tokio::spawn(async move {
            open.closing().await;
            assert!(open.is_closing());
        });
        tokio::task::yield_now().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), connections.all_closed())
                .await
                .is_err(),
            "a connection is still open"
        );
        connections.close_all();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("told to close")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), connections.all_closed())
            .await
            .expect("the connection is gone");

        // One opened after the signal knows at once.
        let late = connections.open();
        assert!(late.is_closing());
        tokio::time::timeout(Duration::from_secs(1), late.closing())
            .await
            .expect("already closing");
    }
}
