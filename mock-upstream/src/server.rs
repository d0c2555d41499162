//! The server: [`start`], the accept loop with its connection cap, and the per-connection
//! loop that reads requests, routes them and writes (or streams) the answers.

use std::collections::BTreeMap;
use std::io::{self, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::http::{error_response, linger_close, read_request, write_response, ReadError};
use crate::provider::{count_stream_end, Provider};
use crate::routes::{handle, Answer};
use crate::sse;

/// Concurrent connections served by [`start`]; further connections get a 503 and are closed.
pub const MAX_CONNECTIONS: usize = 512;

/// A connection idle (or stalled mid-request) this long is closed.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Shared {
    providers: Mutex<BTreeMap<String, Provider>>,
    stop: AtomicBool,
    active: AtomicUsize,
    max_connections: usize,
}

impl Shared {
    pub(crate) fn providers(&self) -> MutexGuard<'_, BTreeMap<String, Provider>> {
        // Nothing panics while holding the lock, but never let one poisoned lock end the mock.
        self.providers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Frees a connection slot when the connection's thread ends (or never starts).
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running mock. Stops accepting connections when dropped or [`Server::shutdown`]; connections
/// already open are closed after their current request (best effort, nothing is joined).
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:PORT` (a wildcard bind address is given as loopback).
    pub fn url(&self) -> String {
        format!("http://{}", reachable(self.addr))
    }

    /// Stops accepting new connections (best effort; returns at once).
    pub fn shutdown(&self) {
        if !self.shared.stop.swap(true, Ordering::SeqCst) {
            // Wake the accept loop so that it sees the flag and drops the listener.
            let _ = TcpStream::connect_timeout(&reachable(self.addr), Duration::from_secs(1));
        }
    }

    /// Blocks until the server stops (the binary's main thread).
    pub fn join(mut self) {
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The address a client on this machine can connect to for a bound address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Starts the mock on `addr` (`127.0.0.1:0` picks a free port) and returns at once.
pub fn start(addr: &str) -> io::Result<Server> {
    start_with_limit(addr, MAX_CONNECTIONS)
}

/// [`start`] with another cap on concurrent connections (at least 1).
pub fn start_with_limit(addr: &str, max_connections: usize) -> io::Result<Server> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        providers: Mutex::default(),
        stop: AtomicBool::new(false),
        active: AtomicUsize::new(0),
        max_connections: max_connections.max(1),
    });
    let for_loop = shared.clone();
    let accept = std::thread::Builder::new()
        .name("mock-accept".into())
        .spawn(move || accept_loop(listener, &for_loop))?;
    Ok(Server {
        addr,
        shared,
        accept: Some(accept),
    })
}

fn accept_loop(listener: TcpListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(_) => {
                // e.g. out of file descriptors: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        // Only this thread takes slots, so the check and the increment cannot race.
        if shared.active.load(Ordering::SeqCst) >= shared.max_connections {
            reject(stream);
            continue;
        }
        shared.active.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(shared.clone());
        let spawned = std::thread::Builder::new()
            .name("mock-conn".into())
            .spawn(move || {
                let slot = slot;
                serve_connection(stream, &slot.0);
            });
        // If the thread could not be spawned, the closure (stream and slot) was dropped: the
        // connection is closed and its slot freed.
        drop(spawned);
    }
}

/// Answers a connection over the cap with 503 without reading from it.
fn reject(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let resp = error_response(503, "too many connections");
    let _ = write_response(&mut stream, &resp, true, false);
    let _ = stream.shutdown(Shutdown::Write);
}

fn serve_connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    // Every answer leaves in whole writes; SSE events in particular must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while !shared.stop.load(Ordering::SeqCst) {
        let req = match read_request(&mut reader, &mut writer) {
            Ok(r) => r,
            Err(ReadError::Closed) => break,
            Err(ReadError::Bad(status, msg)) => {
                let _ = write_response(&mut writer, &error_response(status, &msg), true, false);
                linger_close(&mut reader, &mut writer);
                return;
            }
        };
        match handle(&req, shared) {
            Answer::Respond(resp) => {
                // A 1xx as a final answer leaves the client waiting: end the exchange.
                let close = req.close || resp.status < 200;
                let head_only = req.method == "HEAD";
                if write_response(&mut writer, &resp, close, head_only).is_err() || close {
                    break;
                }
            }
            Answer::Drop => break,
            Answer::Stream(stream) => {
                // HTTP/1.0 has no chunked coding: its streams end by closing the connection.
                let close = req.close || !req.http11;
                let outcome = sse::send(&mut writer, &stream.plan, req.http11, close);
                count_stream_end(shared, &stream, outcome);
                // A dropped stream closes without the terminating chunk (the shutdown below).
                if outcome != sse::Outcome::Completed || close {
                    break;
                }
            }
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}
