//! The client side of the control socket: one request, one reply, and what to print.
//! Exit codes (docs/cli.md): 0 success, 1 refused or failed, 2 usage, 3 unreachable.

use crate::common::protocol::{FromJson, Request, Response, Streamed};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub enum ClientError {
    /// No daemon answers at this socket (exit 3).
    Unreachable(String),
    /// The daemon answered `ok: false` (exit 1).
    Refused(String),
}

pub struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Connection {
    /// Connects to `socket`; `how` says how it was chosen, for the error.
    pub fn open(socket: &Path, how: &str) -> Result<Connection, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            ClientError::Unreachable(format!(
                "cannot reach the orchestrator at {} ({how}): {e}",
                socket.display()
            ))
        })?;
        let writer = stream
            .try_clone()
            .map_err(|e| ClientError::Unreachable(format!("{}: {e}", socket.display())))?;
        Ok(Connection {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one request and returns the reply's body when it is `ok`.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let lost = |e: std::io::Error| {
            ClientError::Unreachable(format!("connection to the orchestrator lost: {e}"))
        };
        // A refusing daemon may answer and close before we finish writing: read its
        // answer even when the write fails.
        let written = writeln!(self.writer, "{req}");
        let mut line = String::new();
        let n = match self.reader.read_line(&mut line) {
            Ok(n) => n,
            Err(e) => return Err(lost(written.err().unwrap_or(e))),
        };
        if n == 0 {
            return Err(ClientError::Unreachable(
                "the orchestrator closed the connection without answering".into(),
            ));
        }
        let reply = Response::parse(&line).map_err(|e| {
            ClientError::Refused(format!("unreadable reply from the orchestrator: {e}"))
        })?;
        reply.into_result().map_err(ClientError::Refused)
    }

    /// The next line of a streamed answer (`logs -f`), parsed; `Ok(None)` at the end
    /// of the stream (the daemon closed it).
    pub fn next(&mut self) -> Result<Option<Streamed>, ClientError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => Streamed::parse(&line).map(Some).map_err(|e| {
                ClientError::Refused(format!("unreadable reply from the orchestrator: {e}"))
            }),
            Err(e) => Err(ClientError::Unreachable(format!(
                "connection to the orchestrator lost: {e}"
            ))),
        }
    }

    /// Waits until the daemon closes the connection (it exits), at most `timeout`.
    pub fn wait_closed(mut self, timeout: Duration) -> bool {
        let _ = self.reader.get_ref().set_read_timeout(Some(timeout));
        let mut buf = String::new();
        matches!(self.reader.read_line(&mut buf), Ok(0))
    }
}
