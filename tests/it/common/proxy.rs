//! A TCP proxy in front of the simulator that knows when a request is in flight: a connection
//! whose client has sent bytes since it last received any is waiting for an answer. The
//! simulator logs a request only once answered, so this is how a test can wait until jobsync
//! is stuck inside a request (and not merely about to send one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    waiting: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// `http://ADDR` of the proxy, to give jobsync as `api.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections whose client is waiting for an answer right now.
    pub fn requests_in_flight(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a proxy to `target` on a free port of 127.0.0.1, on the current runtime.
pub async fn start_proxy(target: SocketAddr) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let waiting = Arc::new(AtomicUsize::new(0));
    let counter = waiting.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((client, _)) = listener.accept().await {
            connections.spawn(relay(client, target, counter.clone()));
        }
    });
    Proxy {
        addr,
        waiting,
        task,
    }
}

/// Copies both ways; `waiting` counts this connection from the client's bytes until the
/// server's first bytes back.
async fn relay(client: TcpStream, target: SocketAddr, waiting: Arc<AtomicUsize>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let state = Arc::new(Waiting {
        flag: AtomicBool::new(false),
        count: waiting,
    });
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up_state = state.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Marked before the bytes leave: an answer may come back before `write_all` returns.
            up_state.set(true);
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let down_state = state.clone();
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            down_state.set(false);
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    // Either side closing ends the connection for the other.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    state.set(false);
}

struct Waiting {
    flag: AtomicBool,
    count: Arc<AtomicUsize>,
}

impl Waiting {
    fn set(&self, waiting: bool) {
        let was = self.flag.swap(waiting, Ordering::SeqCst);
        match (was, waiting) {
            (false, true) => {
                self.count.fetch_add(1, Ordering::SeqCst);
            }
            (true, false) => {
                self.count.fetch_sub(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}
