//! Upstream I/O for the proxy: one attempt (fetch with the provider's timeout, abortable), a
//! bounded body read, and the streaming relay that meters a body on its way to the client.
//!
//! Decisions are not made here: `gateway_core::proxy` decides what to do with each answer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{select, Either};
use futures::Stream;
use gateway_core::balancer::Pick;
use gateway_core::proxy::{Body, Delivery, End, Head, Meter, Metered, Plan, Step, FORWARD};
use worker::{
    AbortController, ByteStream, Delay, Env, Fetch, Headers, Method, Request, RequestInit, Response,
};

/// The parts of the client's request that go upstream.
pub struct Outgoing {
    /// Method.
    pub method: Method,
    /// Path below the group (no leading slash).
    pub path: String,
    /// `?query`, or empty.
    pub query: String,
    /// Client headers, lower-case names (only [`FORWARD`] ones are sent).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Bodies for particular providers (by name) instead of `body` (a model renamed per
    /// provider).
    pub bodies: Vec<(String, Vec<u8>)>,
    /// The gateway's request id, sent as `X-Request-Id`.
    pub request_id: String,
}

/// Lower-cased header list.
pub fn lower_headers(h: &Headers) -> Vec<(String, String)> {
    h.entries()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

async fn within<T>(ms: u64, f: impl Future<Output = T>) -> Option<T> {
    match select(Box::pin(f), Delay::from(Duration::from_millis(ms))).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

/// Sends `o` to `pick` (with its secret's value as `Authorization: Bearer`) and waits for the
/// answer head within the provider's timeout. A timed-out request is aborted.
pub async fn send(
    pick: &Pick,
    secret: Option<String>,
    o: &Outgoing,
) -> (Head, Option<worker::Response>) {
    let url = format!("{}/{}{}", pick.url.trim_end_matches('/'), o.path, o.query);
    let out = Headers::new();
    for (k, v) in &o.headers {
        if FORWARD.contains(&k.as_str()) {
            let _ = out.set(k, v);
        }
    }
    let _ = out.set("X-Request-Id", &o.request_id);
    if let Some(key) = secret {
        let _ = out.set("Authorization", &format!("Bearer {key}"));
    }
    let mut init = RequestInit::new();
    init.with_method(o.method.clone()).with_headers(out);
    let body = o
        .bodies
        .iter()
        .find(|(name, _)| *name == pick.name)
        .map_or(o.body.as_slice(), |(_, b)| b.as_slice());
    if !body.is_empty() && !matches!(o.method, Method::Get | Method::Head) {
        init.with_body(Some(js_sys::Uint8Array::from(body).into()));
    }
    let Ok(req) = Request::new_with_init(&url, &init) else {
        return (Head::ConnectionError, None);
    };
    let controller = AbortController::default();
    let signal = controller.signal();
    match within(
        pick.timeout_ms,
        Fetch::Request(req).send_with_signal(&signal),
    )
    .await
    {
        Some(Ok(resp)) => (
            Head::Response {
                status: resp.status_code(),
                headers: lower_headers(resp.headers()),
            },
            Some(resp),
        ),
        Some(Err(_)) => (Head::ConnectionError, None),
        None => {
            controller.abort();
            (Head::Timeout, None)
        }
    }
}

/// Reads a whole (known, bounded length) body within `ms`: `Err(true)` on timeout, `Err(false)`
/// when the body failed.
pub async fn read_all(resp: &mut worker::Response, ms: u64) -> Result<Vec<u8>, bool> {
    match within(ms.max(1), resp.bytes()).await {
        Some(Ok(b)) => Ok(b),
        Some(Err(_)) => Err(false),
        None => Err(true),
    }
}

/// A body piped to the client chunk by chunk, metered on the way. It ends the upstream stream
/// when no chunk arrives for `idle_ms`; when it ends (or is dropped because the client went
/// away, which cancels the upstream read) it sends what the meter saw.
pub struct Relay {
    inner: Pin<Box<ByteStream>>,
    idle_ms: u64,
    idle: Pin<Box<Delay>>,
    meter: Option<Meter>,
    done: Option<oneshot::Sender<Metered>>,
}

impl Relay {
    /// A relay over `body`, and the receiver of its end.
    pub fn new(
        body: ByteStream,
        meter: Meter,
        idle_ms: u64,
    ) -> (Relay, oneshot::Receiver<Metered>) {
        let (tx, rx) = oneshot::channel();
        let relay = Relay {
            inner: Box::pin(body),
            idle_ms,
            idle: Box::pin(Delay::from(Duration::from_millis(idle_ms))),
            meter: Some(meter),
            done: Some(tx),
        };
        (relay, rx)
    }

    fn end(&mut self, end: End) {
        if let (Some(m), Some(tx)) = (self.meter.take(), self.done.take()) {
            let _ = tx.send(m.finish(end));
        }
    }
}

impl Stream for Relay {
    type Item = worker::Result<Vec<u8>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.done.is_none() {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(m) = self.meter.as_mut() {
                    m.feed(&chunk);
                }
                let ms = self.idle_ms;
                self.idle = Box::pin(Delay::from(Duration::from_millis(ms)));
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.end(End::UpstreamFailed);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.end(End::Completed);
                Poll::Ready(None)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.end(End::IdleTimeout);
                    Poll::Ready(Some(Err(worker::Error::RustError(
                        "the provider stopped sending".into(),
                    ))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.end(End::ClientGone);
    }
}

fn elapsed_ms(t0: f64) -> u32 {
    (js_sys::Date::now() - t0).max(0.0) as u32
}

/// Where the walk over the candidates ended.
pub enum Walked {
    /// An answer for the client (body buffered or relayed; status and headers still to set),
    /// and the receiver of what its body did once it ends.
    Delivered(Delivery, Response, oneshot::Receiver<Metered>),
    /// No answer to pass on: a failure or the stale copy.
    Other(Step),
}

/// Walks the plan's ranked candidates: forward, let the plan judge the head, fail over; a
/// known-length body is read whole (a failure there still fails over), any other is relayed.
pub async fn walk(env: &Env, p: &mut Plan, out: &Outgoing) -> worker::Result<Walked> {
    let mut step = p.first_step();
    loop {
        let Step::Forward(i) = step else {
            return Ok(Walked::Other(step));
        };
        let Some(pick) = p.candidate(i).cloned() else {
            return Ok(Walked::Other(p.on_body_failed(false)));
        };
        let secret = pick
            .secret
            .as_deref()
            .and_then(|n| crate::config::var(env, n));
        let t0 = js_sys::Date::now();
        let (head, resp) = send(&pick, secret, out).await;
        step = p.on_head(head, elapsed_ms(t0));
        let (d, mut resp) = match (step, resp) {
            (Step::Deliver(d), Some(resp)) => (d, resp),
            (Step::Deliver(_), None) => {
                step = p.on_body_failed(false);
                continue;
            }
            (other, _) => {
                step = other;
                continue;
            }
        };
        let mut meter = Meter::new(d.content_type.as_deref(), d.collect);
        if d.body == Body::Stream {
            let (relay, rx) = Relay::new(resp.stream()?, meter, pick.timeout_ms);
            return Ok(Walked::Delivered(d, Response::from_stream(relay)?, rx));
        }
        let left = pick.timeout_ms.saturating_sub(u64::from(elapsed_ms(t0)));
        match read_all(&mut resp, left).await {
            Ok(bytes) => {
                meter.feed(&bytes);
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(meter.finish(End::Completed));
                return Ok(Walked::Delivered(d, Response::from_bytes(bytes)?, rx));
            }
            Err(timed_out) => step = p.on_body_failed(timed_out),
        }
    }
}
