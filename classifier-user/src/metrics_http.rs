//! The HTTP responder for `/metrics`, built so that no client can hold it:
//! hyper's HTTP/1 server (one request per connection) with a header-read
//! timeout, a whole-connection deadline, a request-head size cap, and at most
//! `Limits::connections` connections at once. When every slot is taken, the
//! connection that has waited longest without sending a complete request
//! head is closed to make room; only when none is waiting is the newcomer
//! closed at once. So thousands of idle or byte-a-second clients cost a
//! bounded number of descriptors and bytes, and a scraper that sends its
//! request right away is still answered.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Mutex, Semaphore},
    task::AbortHandle,
};

use crate::{daemon::Daemon, metrics};

/// The bounds of the responder.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Connections served at once (each costs one descriptor and a buffer).
    pub(crate) connections: usize,
    /// Time a client has to send its whole request head.
    pub(crate) header_read: Duration,
    /// Time a connection may live at all, response included.
    pub(crate) connection: Duration,
    /// Largest request head accepted (hyper's minimum is 8 KiB); larger gets 431.
    pub(crate) max_head: usize,
}

pub(crate) const LIMITS: Limits = Limits {
    connections: 256,
    header_read: Duration::from_secs(2),
    connection: Duration::from_secs(10),
    max_head: 8192,
};

/// Connections that have not sent a complete request head yet, oldest first.
#[derive(Default)]
struct Waiting {
    next_id: u64,
    conns: BTreeMap<u64, AbortHandle>,
}

impl Waiting {
    fn evict_oldest(&mut self) -> bool {
        match self.conns.pop_first() {
            Some((_, h)) => {
                h.abort();
                true
            }
            None => false,
        }
    }
}

/// Removes a connection from `Waiting` however its task ends.
struct Leave {
    waiting: Arc<StdMutex<Waiting>>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if let Ok(mut w) = self.waiting.lock() {
            w.conns.remove(&self.id);
        }
    }
}

fn response(status: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// GET and HEAD /metrics; 405 with `Allow` for other methods there; 404
/// elsewhere. hyper answers unparsable requests with 400 and oversized heads
/// with 431 itself, and leaves the body out of HEAD answers.
async fn answer(
    req: Request<Incoming>,
    daemon: Arc<Mutex<Daemon>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(response(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: metrics are on /metrics\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed: GET or HEAD\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let rendered = {
        let mut d = daemon.lock().await;
        metrics::render(&mut d)
    };
    Ok(match rendered {
        Ok(body) => response(StatusCode::OK, metrics::CONTENT_TYPE, body),
        Err(e) => response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("reading counters: {e}\n"),
        ),
    })
}

/// Serves until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, daemon: Arc<Mutex<Daemon>>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let waiting = Arc::new(StdMutex::new(Waiting::default()));
    let mut accept_errors_logged = false;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                accept_errors_logged = false;
                s
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning on the
                // pending connection; log once per run of errors.
                if !accept_errors_logged {
                    log::warn!("metrics: accepting a connection: {e}");
                    accept_errors_logged = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let evicted = waiting
                    .lock()
                    .map(|mut w| w.evict_oldest())
                    .unwrap_or(false);
                if !evicted {
                    drop(stream);
                    continue;
                }
                // The evicted task gives its slot back when the runtime
                // drops it, on the next turn.
                match tokio::time::timeout(
                    Duration::from_millis(100),
                    slots.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    _ => {
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        let id = match waiting.lock() {
            Ok(mut w) => {
                w.next_id += 1;
                w.next_id
            }
            Err(_) => continue,
        };
        let leave = Leave {
            waiting: waiting.clone(),
            id,
        };
        let daemon = daemon.clone();
        let task = tokio::spawn(async move {
            let _permit = permit;
            let waiting = leave.waiting.clone();
            let _leave = leave;
            let service = service_fn(move |req| {
                // A complete request head arrived: this one is no longer
                // an idle connection that may be evicted.
                if let Ok(mut w) = waiting.lock() {
                    w.conns.remove(&id);
                }
                answer(req, daemon.clone())
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .max_buf_size(limits.max_head)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // Whatever the outcome (timeout, reset, parse error answered
            // with 400), the connection is over and its slot freed.
            let _ = tokio::time::timeout(limits.connection, conn).await;
        });
        // The task has not run yet (one thread): registering now is in time.
        if let Ok(mut w) = waiting.lock() {
            w.conns.insert(id, task.abort_handle());
        }
    }
}
