//! The seams under links: how a node listens, accepts and dials, and how it resolves a seed's name.
//! Production uses real TCP (`Tcp`) and the system resolver (`SystemResolver`); the whole-node
//! simulation swaps in turmoil's simulated TCP (`SimTcp`, behind the `sim` feature, so production
//! builds never compile turmoil), and tests inject their own `Resolver`.
//!
//! Everything above the seam (the Noise handshake, frames, sessions, membership) is the same code
//! whichever transport runs under it. Streams are boxed: one dynamic call per read or write syscall
//! costs nothing next to the syscall, and it keeps `Shared`, links and membership free of a type
//! parameter.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns `host:port` into the addresses to dial. The engine's seam for DNS: tests inject their own.
pub trait Resolver: Send + Sync {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>>;
}

/// The system resolver (`getaddrinfo`, run on tokio's blocking pool by `tokio::net::lookup_host`).
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host(name).await?.collect()) })
    }
}

/// The receiving half of a split stream.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The sending half of a split stream.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// A connected byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn set_nodelay(&self, on: bool) -> io::Result<()>;
    /// Halves that read and write independently (no lock between them).
    fn into_split(self: Box<Self>) -> (ReadHalf, WriteHalf);
}

/// A bound listener.
pub trait Listener: Send + Sync + 'static {
    fn accept(&self) -> BoxFuture<'_, io::Result<(Box<dyn Stream>, SocketAddr)>>;
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Binds listeners and dials peers.
pub trait Transport: Send + Sync + 'static {
    fn bind(&self, address: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>>;
    fn connect(&self, address: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Stream>>>;
}

/// Real TCP through tokio.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tcp;

impl Stream for tokio::net::TcpStream {
    fn set_nodelay(&self, on: bool) -> io::Result<()> {
        tokio::net::TcpStream::set_nodelay(self, on)
    }

    fn into_split(self: Box<Self>) -> (ReadHalf, WriteHalf) {
        let (r, w) = tokio::net::TcpStream::into_split(*self);
        (Box::new(r), Box::new(w))
    }
}

impl Listener for tokio::net::TcpListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(Box<dyn Stream>, SocketAddr)>> {
        Box::pin(async move {
            let (stream, remote) = tokio::net::TcpListener::accept(self).await?;
            Ok((Box::new(stream) as Box<dyn Stream>, remote))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpListener::local_addr(self)
    }
}

impl Transport for Tcp {
    fn bind(&self, address: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(address).await?;
            Ok(Box::new(listener) as Box<dyn Listener>)
        })
    }

    fn connect(&self, address: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Stream>>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(address).await?;
            Ok(Box::new(stream) as Box<dyn Stream>)
        })
    }
}

/// turmoil's simulated TCP: usable only inside a turmoil host. Its streams never lose or reorder
/// bytes, and a segment sent across a partition is never retransmitted (the stream stalls until the
/// link's silence timeout closes it), which the heartbeat and redial must recover from.
#[cfg(feature = "sim")]
#[derive(Debug, Default, Clone, Copy)]
pub struct SimTcp;

#[cfg(feature = "sim")]
impl Stream for turmoil::net::TcpStream {
    fn set_nodelay(&self, on: bool) -> io::Result<()> {
        turmoil::net::TcpStream::set_nodelay(self, on)
    }

    fn into_split(self: Box<Self>) -> (ReadHalf, WriteHalf) {
        let (r, w) = turmoil::net::TcpStream::into_split(*self);
        (Box::new(r), Box::new(w))
    }
}

#[cfg(feature = "sim")]
impl Listener for turmoil::net::TcpListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(Box<dyn Stream>, SocketAddr)>> {
        Box::pin(async move {
            let (stream, remote) = turmoil::net::TcpListener::accept(self).await?;
            Ok((Box::new(stream) as Box<dyn Stream>, remote))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        turmoil::net::TcpListener::local_addr(self)
    }
}

#[cfg(feature = "sim")]
impl Transport for SimTcp {
    fn bind(&self, address: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(address).await?;
            Ok(Box::new(listener) as Box<dyn Listener>)
        })
    }

    fn connect(&self, address: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Stream>>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(address).await?;
            Ok(Box::new(stream) as Box<dyn Stream>)
        })
    }
}
