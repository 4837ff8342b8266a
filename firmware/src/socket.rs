//! A socket split into halves that a TLS connection's reader and writer can share.
//!
//! [`crate::tls::Connection::split`] gives its reader and its writer each a copy of the
//! socket, so the socket must be `Clone`. `&SplitSocket` is: the read half and the write half
//! sit in separate cells, so the reader loop and the writer loop never contend for the same
//! one.

use core::cell::RefCell;

use embedded_io::{ErrorKind, ErrorType};
use embedded_io_async::{Read, Write};

/// Read and write halves of one transport connection.
///
/// Each half's cell is borrowed across the await of one read or write: that is the point (the
/// reader loop owns the read half, the writer loop the write half), and a second concurrent
/// user of the same half gets an error from `try_borrow_mut` instead of a panic.
pub struct SplitSocket<R, W> {
    rd: RefCell<R>,
    wr: RefCell<W>,
}

impl<R, W> SplitSocket<R, W> {
    pub fn new(rd: R, wr: W) -> Self {
        SplitSocket {
            rd: RefCell::new(rd),
            wr: RefCell::new(wr),
        }
    }
}

/// A transport error, reduced to its kind so both halves share one error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketError(pub ErrorKind);

impl embedded_io::Error for SocketError {
    fn kind(&self) -> ErrorKind {
        self.0
    }
}

impl core::fmt::Display for SocketError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "socket error: {:?}", self.0)
    }
}

impl core::error::Error for SocketError {}

impl<R, W> ErrorType for &SplitSocket<R, W> {
    type Error = SocketError;
}

/// Returned when one half is used from two places at once (a bug, reported not panicked).
const BUSY: SocketError = SocketError(ErrorKind::Other);

#[allow(clippy::await_holding_refcell_ref)]
impl<R: Read, W> Read for &SplitSocket<R, W> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, SocketError> {
        let mut rd = self.rd.try_borrow_mut().map_err(|_| BUSY)?;
        rd.read(buf)
            .await
            .map_err(|e| SocketError(embedded_io::Error::kind(&e)))
    }
}

#[allow(clippy::await_holding_refcell_ref)]
impl<R, W: Write> Write for &SplitSocket<R, W> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, SocketError> {
        let mut wr = self.wr.try_borrow_mut().map_err(|_| BUSY)?;
        wr.write(buf)
            .await
            .map_err(|e| SocketError(embedded_io::Error::kind(&e)))
    }

    async fn flush(&mut self) -> Result<(), SocketError> {
        let mut wr = self.wr.try_borrow_mut().map_err(|_| BUSY)?;
        wr.flush()
            .await
            .map_err(|e| SocketError(embedded_io::Error::kind(&e)))
    }
}
