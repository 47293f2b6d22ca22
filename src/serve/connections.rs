//! Accepting connections: at most [`MAX_CONNECTIONS`] open at once, and none kept by a client
//! that sends a request too slowly.
//!
//! A client that opens a connection and sends half a request holds a socket (a file
//! descriptor) for as long as it likes unless the server gives up on it. A few hundred such
//! clients used to exhaust the process's file limit, and then a normal request waited forever.
//! So the headers of every request (the first, and each next one on a kept-alive connection)
//! must arrive within the header timeout (hyper closes the connection otherwise), a request's
//! body within the body timeout (the handler then answers 400), and the server stops accepting
//! while [`MAX_CONNECTIONS`] are open: further clients wait in the listen queue until a slow one
//! has been dropped. Responses that stream for long (an event stream, a sample) are not limited:
//! their time is the server's, not the client's.

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;

/// Connections open at once; a page holds a few (its requests and an event stream).
pub const MAX_CONNECTIONS: usize = 256;

/// How long clients may take to send a request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the first byte a connection waits for (a request's, or the next one's on a
    /// kept-alive connection) to the end of the headers.
    pub header: Duration,
    /// From the end of the headers to the end of the body (an upload of 32 MiB takes well under
    /// a second on this machine, and a few seconds over a local network).
    pub body: Duration,
}

/// Serves `app` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, app: Router, timeouts: Timeouts) {
    let app = app.layer(axum::middleware::map_request(
        move |request: Request| async move { with_body_deadline(request, timeouts.body) },
    ));
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = open.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors, or a connection reset before it was accepted: try again
            // in a moment rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(timeouts.header);
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

/// The request with a body that fails once `limit` has passed (the extractor that reads it
/// then refuses the request).
fn with_body_deadline(request: Request, limit: Duration) -> Request {
    request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
        })
    })
}

struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending if this.deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Some(Err(axum::Error::new(format!(
                    "the body did not arrive within {} s; send the request at once",
                    this.limit.as_secs()
                )))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
