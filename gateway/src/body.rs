//! The one body type the gateway's services answer with, and the one they read requests with.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Any body: fixed bytes for gateway answers, streamed bodies for relayed ones.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A JSON answer.
pub fn json(value: &serde_json::Value) -> http::Response<Body> {
    let mut response = http::Response::new(full(value.to_string()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// How much of an unread request body is read after an early answer, and for how long.
const DRAIN_MAX_BYTES: usize = 64 * 1024;
const DRAIN_FOR: Duration = Duration::from_secs(1);

/// A request's body: streamed by hyper's server, or read whole by the hand-written HTTP/1.1
/// server ([`crate::server_h1`]) before the request was handled.
///
/// A streamed body dropped before its end (the gateway answered early: 403, 404, 429 ...) is
/// read to the end in the background, up to 64 KiB and 1 s: an HTTP/2 client still sending
/// then sees its stream end normally instead of an RST_STREAM after the answer, which some
/// clients (curl 7.x among them) report as an error even though the answer was complete.
pub struct RequestBody(Source);

enum Source {
    Streamed(Option<Incoming>),
    Whole(Option<Bytes>),
}

impl RequestBody {
    pub fn new(body: Incoming) -> Self {
        Self(Source::Streamed(Some(body)))
    }

    /// A body already read whole.
    pub fn whole(bytes: Bytes) -> Self {
        Self(Source::Whole((!bytes.is_empty()).then_some(bytes)))
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().0 {
            Source::Streamed(Some(body)) => Pin::new(body).poll_frame(cx),
            Source::Streamed(None) => Poll::Ready(None),
            Source::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Source::Streamed(body) => body.as_ref().is_none_or(|body| body.is_end_stream()),
            Source::Whole(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Source::Streamed(Some(body)) => body.size_hint(),
            Source::Streamed(None) => SizeHint::with_exact(0),
            Source::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Source::Streamed(body) = &mut self.0 else {
            return;
        };
        let Some(body) = body.take() else { return };
        if body.is_end_stream() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let drain = Limited::new(body, DRAIN_MAX_BYTES).collect();
                let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
            });
        }
    }
}

/// Why a relayed request body ended early: always the caller's doing, never the
/// destination's, so it answers the caller with 400 or 408 and never moves a breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFault {
    TooLarge { max: usize },
    Unreadable(String),
}

/// What a [`CappedBody`] saw, shared with whoever sent it upstream.
#[derive(Debug, Default)]
pub struct BodyWatch {
    bytes: AtomicU64,
    /// The declared length, when there is one: the body has ended once that much passed.
    declared: Option<u64>,
    ended: AtomicBool,
    fault: Mutex<Option<BodyFault>>,
}

impl BodyWatch {
    /// Data bytes that passed through.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether the caller's body reached its end (a sender need not poll past a declared
    /// length, or poll an empty body at all).
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire) || self.declared.is_some_and(|n| self.bytes() >= n)
    }

    /// Why the body stopped before its end, if it did.
    pub fn fault(&self) -> Option<BodyFault> {
        self.fault.lock().expect("not poisoned").clone()
    }

    fn set_fault(&self, fault: BodyFault) {
        self.fault
            .lock()
            .expect("not poisoned")
            .get_or_insert(fault);
    }
}

/// A caller's request body relayed as a stream, with the size cap enforced on the bytes
/// themselves: crossing `max` ends the stream with an error, so the upstream request is
/// aborted (chunked: no last chunk; with a length: short) and never completes with a cut
/// body. Keeps the inner size hint so a body with `Content-Length` is relayed with it.
pub struct CappedBody<B> {
    inner: B,
    max: usize,
    watch: Arc<BodyWatch>,
}

impl<B: http_body::Body> CappedBody<B> {
    pub fn new(inner: B, max: usize) -> (Self, Arc<BodyWatch>) {
        let watch = Arc::new(BodyWatch {
            declared: inner.size_hint().exact(),
            ..BodyWatch::default()
        });
        let body = CappedBody {
            inner,
            max,
            watch: watch.clone(),
        };
        (body, watch)
    }
}

impl<B> http_body::Body for CappedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let watch = &self.watch;
        match frame {
            None => {
                watch.ended.store(true, Ordering::Release);
                Poll::Ready(None)
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let total = watch.bytes.fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if total > self.max as u64 {
                        let fault = BodyFault::TooLarge { max: self.max };
                        watch.set_fault(fault);
                        return Poll::Ready(Some(Err(format!(
                            "request body exceeds the limit of {} bytes",
                            self.max
                        )
                        .into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                let message = error.to_string();
                watch.set_fault(BodyFault::Unreadable(message.clone()));
                Poll::Ready(Some(Err(message.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
