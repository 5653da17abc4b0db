//! The transport both sides go through: a TCP proxy on loopback that
//! counts the bytes, and the nodes' start.

#[allow(unused_imports)]
use super::*;

/// Bytes copied by a [`Proxy`]: `up` from the dialer to the listener.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Bytes {
    pub(super) up: u64,
    pub(super) down: u64,
    /// Connections the proxy accepted.
    pub(super) conns: u64,
}

impl Bytes {
    pub(super) fn total(self) -> u64 {
        self.up + self.down
    }

    pub(super) fn since(self, before: Bytes) -> Bytes {
        Bytes {
            up: self.up - before.up,
            down: self.down - before.down,
            conns: self.conns - before.conns,
        }
    }

    pub(super) fn json(self) -> Value {
        json!({"up": self.up, "down": self.down, "total": self.total(), "connections": self.conns})
    }
}

/// A counting TCP proxy on loopback in front of one upstream address.
pub(super) struct Proxy {
    pub(super) addr: SocketAddr,
    pub(super) up: Arc<AtomicU64>,
    pub(super) down: Arc<AtomicU64>,
    pub(super) conns: Arc<AtomicU64>,
    pub(super) accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub(super) async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let conns = Arc::new(AtomicU64::new(0));
        let (u, d, c) = (up.clone(), down.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                // Small frames must not wait for Nagle: both ends set it too.
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, u.clone()));
                tokio::spawn(pump(sr, cw, d.clone()));
            }
        });
        Ok(Proxy {
            addr,
            up,
            down,
            conns,
            accept,
        })
    }

    pub(super) fn bytes(&self) -> Bytes {
        Bytes {
            up: self.up.load(Ordering::SeqCst),
            down: self.down.load(Ordering::SeqCst),
            conns: self.conns.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Open connections end when their ends close; only stop accepting.
        self.accept.abort();
    }
}

pub(super) async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        count.fetch_add(n as u64, Ordering::SeqCst);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The TCP socket address of a node's `/ip4/../tcp/../p2p/..` listen address.
pub(super) fn socket_of(addr: &Multiaddr) -> Result<SocketAddr> {
    let s = addr.to_string();
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        ["", "ip4", ip, "tcp", port, ..] => Ok(format!("{ip}:{port}").parse()?),
        _ => bail!("not a TCP address: {s}"),
    }
}

/// The address of `peer` behind a proxy.
pub(super) fn via(proxy: &Proxy, peer: PeerId) -> Result<Multiaddr> {
    Ok(format!("/ip4/{}/tcp/{}/p2p/{peer}", proxy.addr.ip(), proxy.addr.port()).parse()?)
}

/// Start a loopback-only node (mDNS off, as by default) and wait for its address.
pub(super) async fn start_node(h: &Hearth) -> Result<(SyncHandle, SocketAddr)> {
    let node = h
        .start_sync(NodeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            ..NodeConfig::default()
        })
        .await?;
    for _ in 0..500 {
        if let Some(a) = node.listen_addrs().await?.first() {
            let sock = socket_of(a)?;
            return Ok((node, sock));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("the node never listened")
}

/// Wait for the next `Synced` event of a node.
pub(super) async fn next_synced(
    ev: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
    within: Duration,
) -> Result<NodeEvent> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ev.recv()).await {
            Err(_) => bail!("no Synced event within {within:?}"),
            Ok(Ok(e @ NodeEvent::Synced { .. })) => {
                if std::env::var_os("HEARTH_BENCH_TRACE").is_some() {
                    eprintln!("{e:?}");
                }
                return Ok(e);
            }
            Ok(Ok(e)) if std::env::var_os("HEARTH_BENCH_TRACE").is_some() => eprintln!("{e:?}"),
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => bail!("node events closed: {e}"),
        }
    }
}
