//! One send path to a destination, for external targets and completion deliveries alike: a
//! slot in the destination's lane, the request, and the outcome reported to the lane's
//! breaker from the one table in [`crate::outcome`].

use std::future::Future;

use http::Response;
use nexus_outbound_queue::{LaneRef, OutboundQueue, Outcome, Rejection};
use tokio::time::Instant;

use crate::body::BoxError;
use crate::telemetry::Span;

/// Why a send did not bring an answer back.
#[derive(Debug)]
pub enum SendError {
    /// The lane refused at once: full, or its breaker is open.
    Refused(Rejection),
    /// No slot in the lane before the deadline.
    NoSlot,
    /// The request failed because of the sender's side (the caller's body, an address the
    /// callback policy refused): the breaker hears nothing of it.
    NotTheDestination(Option<BoxError>),
    /// The destination could not be reached (counted as down).
    Unreachable(BoxError),
    /// No answer before the deadline (counted as down).
    TimedOut,
}

/// Who is at fault when a send fails, as the sender sees it.
pub trait Fault {
    /// Whether the send failed because of the sender's own side; `timed_out` says whether the
    /// deadline passed.
    fn senders_fault(&self, timed_out: bool, error: Option<&BoxError>) -> bool;
}

/// Sends through `lane`: waits for a slot (until `deadline`), runs `request` (until
/// `deadline`), and reports the outcome to the lane's breaker. `lane_wait` (recorded when the
/// send is traced) ends when the slot is there.
pub async fn send<B, E>(
    queue: &OutboundQueue,
    lane: LaneRef<'_>,
    deadline: Instant,
    request: impl Future<Output = Result<Response<B>, E>>,
    fault: &impl Fault,
    mut lane_wait: Span,
) -> Result<Response<B>, SendError>
where
    E: Into<BoxError>,
{
    let permit = match tokio::time::timeout_at(deadline, queue.acquire(lane)).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(rejection)) => {
            lane_wait.fail("refused: the lane is full or its breaker open");
            return Err(SendError::Refused(rejection));
        }
        Err(_) => {
            lane_wait.fail("no slot before the deadline");
            return Err(SendError::NoSlot);
        }
    };
    lane_wait.end();
    let sent = tokio::time::timeout_at(deadline, request).await;
    match sent {
        Ok(Ok(response)) if fault.senders_fault(false, None) => {
            drop(response);
            // An unfinished permit says nothing about the destination.
            drop(permit);
            Err(SendError::NotTheDestination(None))
        }
        Ok(Ok(response)) => {
            permit.finish(crate::outcome::classify(response.status()));
            Ok(response)
        }
        Ok(Err(error)) => {
            let error = error.into();
            if fault.senders_fault(false, Some(&error)) {
                drop(permit);
                return Err(SendError::NotTheDestination(Some(error)));
            }
            permit.finish(Outcome::DestinationDown);
            Err(SendError::Unreachable(error))
        }
        Err(_) if fault.senders_fault(true, None) => {
            drop(permit);
            Err(SendError::NotTheDestination(None))
        }
        Err(_) => {
            permit.finish(Outcome::DestinationDown);
            Err(SendError::TimedOut)
        }
    }
}

/// The innermost cause of an error, which names what actually went wrong.
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}
