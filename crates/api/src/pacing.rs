//! Connections that carry status callbacks wait out a burst before they are read.
//!
//! While this node sends tasks due at the same instant (see [`Sending`]), a status callback is
//! held before any work is done with it. A downstream that keeps a connection open for its
//! callbacks would still cost the node its reads, parsing and routing during the burst; once a
//! connection has carried a callback, the next request on it is not read until the burst is out,
//! bounded like the hold itself (a request waits out one burst at most, however many reads it
//! takes). Connections that never carried one (operators, upstreams creating tasks, health
//! checks) are read as they arrive.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use pacer_store::batch::Sending;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Accepts connections whose reads wait out a burst once they have carried a status callback.
pub struct PacedListener {
    inner: TcpListener,
    sending: Sending,
}

impl PacedListener {
    /// Serves `inner`; `sending` is the dispatcher's count of requests being sent.
    pub fn new(inner: TcpListener, sending: Sending) -> Self {
        Self { inner, sending }
    }
}

impl Listener for PacedListener {
    type Io = PacedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, address) = Listener::accept(&mut self.inner).await;
        let stream = PacedStream {
            inner: stream,
            sending: self.sending.clone(),
            lane: Lane::default(),
            pause: None,
            between_requests: false,
        };
        (stream, address)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Listener::local_addr(&self.inner)
    }
}

/// Whether a connection has carried a status callback; shared between the connection and the
/// requests read from it (as their connect info).
#[derive(Debug, Clone, Default)]
pub struct Lane(Arc<AtomicBool>);

impl Lane {
    /// The connection carried a status callback: its next reads wait out bursts.
    pub(crate) fn carried_callback(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn carries_callbacks(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Connected<IncomingStream<'_, PacedListener>> for Lane {
    fn connect_info(stream: IncomingStream<'_, PacedListener>) -> Self {
        stream.io().lane.clone()
    }
}

type Pause = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An accepted connection; see the module's description.
pub struct PacedStream {
    inner: TcpStream,
    sending: Sending,
    lane: Lane,
    /// The wait for the burst to end, while one is under way.
    pause: Option<Pause>,
    /// Something was written (an answer) since the last read: the next read starts a request.
    /// Only such a read waits, so a request waits out one burst at most, however many reads it
    /// takes.
    between_requests: bool,
}

impl AsyncRead for PacedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pause.is_none()
            && this.between_requests
            && this.lane.carries_callbacks()
            && this.sending.is_sending()
        {
            let sending = this.sending.clone();
            this.pause = Some(Box::pin(async move { sending.settled().await }));
        }
        if let Some(pause) = &mut this.pause {
            ready!(pause.as_mut().poll(cx));
            this.pause = None;
            this.between_requests = false;
        }
        let filled = buf.filled().len();
        let read = ready!(Pin::new(&mut this.inner).poll_read(cx, buf));
        if buf.filled().len() > filled {
            this.between_requests = false;
        }
        Poll::Ready(read)
    }
}

impl PacedStream {
    fn wrote(&mut self, written: &io::Result<usize>) {
        if matches!(written, Ok(n) if *n > 0) {
            self.between_requests = true;
        }
    }
}

impl AsyncWrite for PacedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        self.wrote(&written);
        Poll::Ready(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs));
        self.wrote(&written);
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::http::StatusCode;
    use axum::middleware;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;

    use super::*;

    /// Far longer than any answer here takes when it is not held.
    const PROMPTLY: Duration = Duration::from_secs(10);

    /// Sends `GET`/`POST path` on `stream` (kept alive) and reads the status line of the answer.
    async fn ask(stream: &mut TcpStream, method: &str, path: &str) -> String {
        let request =
            format!("{method} {path} HTTP/1.1\r\nhost: pacer\r\ncontent-length: 0\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("written");
        answer(stream).await
    }

    /// Reads one answer without a body (every route here answers an empty 200).
    async fn answer(stream: &mut TcpStream) -> String {
        let mut read = Vec::new();
        let mut byte = [0_u8; 1];
        while !read.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).await.expect("read");
            assert_eq!(n, 1, "the connection closed");
            read.push(byte[0]);
        }
        String::from_utf8_lossy(&read)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    #[tokio::test]
    async fn a_connection_that_carried_a_callback_is_not_read_during_a_burst() {
        let sending = Sending::default();
        let app = Router::new()
            .route(
                "/api/v1/tasks/{id}/callback",
                post(|| async { StatusCode::OK }),
            )
            .route("/healthz", get(|| async { StatusCode::OK }))
            .layer(middleware::from_fn_with_state(
                sending.clone(),
                crate::hold_callbacks,
            ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let address = listener.local_addr().expect("an address");
        let listener = PacedListener::new(listener, sending.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<Lane>()).await
        });

        let callback = "/api/v1/tasks/01a20fea-2b74-7093-9cdb-dd565b158da0/callback";
        let mut downstream = TcpStream::connect(address).await.expect("connected");
        let mut operator = TcpStream::connect(address).await.expect("connected");
        // Nothing being sent: a callback and a health check are both answered at once.
        assert_eq!(
            ask(&mut downstream, "POST", callback).await,
            "HTTP/1.1 200 OK"
        );
        assert_eq!(
            ask(&mut operator, "GET", "/healthz").await,
            "HTTP/1.1 200 OK"
        );

        let burst = sending.start();
        // The connection that carried a callback is not read during the burst: not even a
        // request that is not a callback (which no hold would delay) is answered.
        downstream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: pacer\r\n\r\n")
            .await
            .expect("written");
        let held = tokio::spawn(async move { answer(&mut downstream).await });
        // Other connections are read and answered as usual meanwhile.
        let answered = timeout(PROMPTLY, ask(&mut operator, "GET", "/healthz")).await;
        assert_eq!(
            answered.expect("answered during the burst"),
            "HTTP/1.1 200 OK"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!held.is_finished(), "read during the burst");

        drop(burst);
        let answered = timeout(PROMPTLY, held)
            .await
            .expect("read once the burst was out");
        assert_eq!(answered.expect("the reader ran"), "HTTP/1.1 200 OK");
        server.abort();
    }

    #[tokio::test]
    async fn a_long_burst_pauses_reads_only_so_long() {
        let sending = Sending::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let address = listener.local_addr().expect("an address");
        let mut listener = PacedListener::new(listener, sending.clone());
        let accepted = tokio::spawn(async move { Listener::accept(&mut listener).await });
        let mut client = TcpStream::connect(address).await.expect("connected");
        let (mut stream, _) = accepted.await.expect("accepted");
        stream.lane.carried_callback();
        // An answer went out: the next read starts a request.
        stream.write_all(b"answer").await.expect("written");
        let mut answer = [0_u8; 6];
        client.read_exact(&mut answer).await.expect("answered");
        let _burst = sending.start();
        client.write_all(b"head").await.expect("written");
        let started = tokio::time::Instant::now();
        let mut read = [0_u8; 4];
        timeout(PROMPTLY, stream.read_exact(&mut read))
            .await
            .expect("read within the hold's bound")
            .expect("read");
        assert_eq!(&read, b"head");
        assert!(started.elapsed() >= pacer_store::batch::HOLD_AT_MOST);
        // The rest of the same request is read as it comes, the burst notwithstanding.
        client.write_all(b"body").await.expect("written");
        let started = tokio::time::Instant::now();
        timeout(PROMPTLY, stream.read_exact(&mut read))
            .await
            .expect("read")
            .expect("read");
        assert_eq!(&read, b"body");
        assert!(
            started.elapsed() < pacer_store::batch::HOLD_AT_MOST,
            "a request's later read waited out the burst again"
        );
    }
}
