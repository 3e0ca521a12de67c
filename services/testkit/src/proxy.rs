//! A TCP proxy for fault tests: it sits between a dalc service and one of its dependencies
//! (RabbitMQ, PostgreSQL) so a test can make that dependency be down at start-up, come up
//! later, accept connections but never answer, or drop every connection at once.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpSocket, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
};
use tokio_util::sync::CancellationToken;

/// Whether connections pass bytes through or hold them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Bytes flow both ways.
    Forward,
    /// Nothing is read from either side; bytes wait in the kernel buffers.
    Blackhole,
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` (e.g. RabbitMQ at 127.0.0.1:5672 or
/// PostgreSQL at 127.0.0.1:5432). Dropping it stops listening and closes every connection.
#[derive(Debug)]
pub struct TcpProxy {
    /// The address clients connect to.
    addr: SocketAddr,
    /// The address connections are forwarded to.
    upstream: SocketAddr,
    /// Forward or blackhole, watched by every connection.
    mode: watch::Sender<Mode>,
    /// Cancelled on drop: ends the accept loop and every connection.
    shutdown: CancellationToken,
    /// The token new connections take a child of (itself a child of `shutdown`); `sever`
    /// cancels it and puts a fresh one in its place.
    connections: Arc<Mutex<CancellationToken>>,
    /// Whether `start` has run.
    started: Mutex<bool>,
}

impl TcpProxy {
    /// Reserves a free local port but does NOT listen yet (connections are refused until
    /// `start`). Lets a test start a service before its dependency is "up".
    pub fn reserve(upstream: SocketAddr) -> TcpProxy {
        let probe = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind port 0");
        let addr = probe.local_addr().expect("local address");
        drop(probe);
        let shutdown = CancellationToken::new();
        TcpProxy {
            addr,
            upstream,
            mode: watch::Sender::new(Mode::Forward),
            connections: Arc::new(Mutex::new(shutdown.child_token())),
            shutdown,
            started: Mutex::new(false),
        }
    }

    /// Reserves a port and starts forwarding at once.
    pub async fn start_new(upstream: SocketAddr) -> TcpProxy {
        let proxy = TcpProxy::reserve(upstream);
        proxy.start().await;
        proxy
    }

    /// Starts listening and forwarding (idempotent).
    pub async fn start(&self) {
        let mut started = self.started.lock().expect("proxy lock");
        if *started {
            return;
        }
        let socket = TcpSocket::new_v4().expect("create socket");
        socket.set_reuseaddr(true).expect("set SO_REUSEADDR");
        socket.bind(self.addr).expect("bind the reserved port");
        let listener = socket.listen(1024).expect("listen");
        *started = true;
        tokio::spawn(accept_loop(
            listener,
            self.upstream,
            self.mode.subscribe(),
            self.shutdown.clone(),
            Arc::clone(&self.connections),
        ));
    }

    /// The local address clients connect to (127.0.0.1:PORT), valid before start.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding bytes in both directions on every current and future connection, but
    /// keeps the TCP connections open and keeps accepting new ones: a peer that "accepts
    /// connections but never answers".
    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Forward);
    }

    /// Closes every current connection (both sides), keeps listening.
    pub fn sever(&self) {
        let mut connections = self.connections.lock().expect("proxy lock");
        connections.cancel();
        *connections = self.shutdown.child_token();
    }
}

impl Drop for TcpProxy {
    /// Stops listening and closes all connections.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Accepts clients until shutdown, each in its own task under the current `connections` token.
async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    shutdown: CancellationToken,
    connections: Arc<Mutex<CancellationToken>>,
) {
    loop {
        let client = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let cancel = connections.lock().expect("proxy lock").child_token();
        tokio::spawn(connection(client, upstream, mode.clone(), cancel));
    }
}

/// Serves one client: connects upstream once forwarding (so a blackholed proxy answers nothing
/// even when the upstream is down) and copies both ways until EOF, an error or `cancel`.
async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    cancel: CancellationToken,
) {
    let connect = async {
        if !mode_becomes(&mut mode, Mode::Forward).await {
            return None;
        }
        TcpStream::connect(upstream).await.ok()
    };
    let Some(Some(server)) = cancel.run_until_cancelled(connect).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pipe(client_read, server_write, mode.clone(), cancel.clone()),
        pipe(server_read, client_write, mode, cancel),
    );
}

/// Copies `from` to `to` while forwarding; reads nothing while blackholed. EOF shuts down `to`
/// (by dropping it); an error cancels the whole connection.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let forwarding = mode_becomes(&mut mode, Mode::Forward);
        if cancel.run_until_cancelled(forwarding).await != Some(true) {
            return;
        }
        let n = tokio::select! {
            () = cancel.cancelled() => return,
            alive = mode_becomes(&mut mode, Mode::Blackhole) => {
                if alive { continue } else { return }
            }
            read = from.read(&mut buf) => match read {
                Ok(0) => return,
                Ok(n) => n,
                Err(_) => return cancel.cancel(),
            },
        };
        let written = cancel.run_until_cancelled(to.write_all(&buf[..n])).await;
        if !matches!(written, Some(Ok(()))) {
            return cancel.cancel();
        }
    }
}

/// Waits until the mode is `wanted`; false if the proxy is gone.
async fn mode_becomes(mode: &mut watch::Receiver<Mode>, wanted: Mode) -> bool {
    mode.wait_for(|current| *current == wanted).await.is_ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An upstream that echoes every byte back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    tokio::io::copy(&mut read, &mut write).await.ok();
                });
            }
        });
        addr
    }

    /// Reads exactly `expected.len()` bytes within two seconds and compares them.
    async fn expect_bytes(stream: &mut TcpStream, expected: &[u8]) {
        let mut buf = vec![0u8; expected.len()];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .expect("read echo");
        assert_eq!(buf, expected);
    }

    /// Writes `message` and expects it echoed.
    async fn round_trip(stream: &mut TcpStream, message: &[u8]) {
        stream.write_all(message).await.unwrap();
        expect_bytes(stream, message).await;
    }

    /// Expects the proxy to close `stream` within two seconds.
    async fn assert_closed(stream: &mut TcpStream) {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "expected a closed connection: {read:?}"
        );
    }

    #[tokio::test]
    async fn refuses_before_start_then_forwards() {
        let proxy = TcpProxy::reserve(echo_server().await);
        assert!(TcpStream::connect(proxy.addr()).await.is_err());
        proxy.start().await;
        proxy.start().await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut stream, b"hello").await;
    }

    #[tokio::test]
    async fn blackhole_holds_bytes_until_restored() {
        let proxy = TcpProxy::start_new(echo_server().await).await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut stream, b"before").await;

        proxy.blackhole();
        stream.write_all(b"held").await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "nothing should arrive while blackholed: {read:?}"
        );
        let mut late = TcpStream::connect(proxy.addr()).await.unwrap();
        late.write_all(b"late").await.unwrap();

        proxy.restore();
        expect_bytes(&mut stream, b"held").await;
        expect_bytes(&mut late, b"late").await;
    }

    #[tokio::test]
    async fn sever_closes_connections_and_drop_stops_everything() {
        let proxy = TcpProxy::start_new(echo_server().await).await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut stream, b"alive").await;

        proxy.sever();
        assert_closed(&mut stream).await;

        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut fresh, b"again").await;

        drop(proxy);
        assert_closed(&mut fresh).await;
    }
}
