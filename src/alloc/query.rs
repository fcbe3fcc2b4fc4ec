//! A blocking query client for the alloc server's native socket: usage, device info, per
//! process usage, dumps, and usage subscriptions (what `corelane alloc query`/`dump` and the
//! monitor use). Reporting events is [`super::tracker`]'s job, not this client's.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use prost::Message;

use super::proto;
use super::wire::MsgType;
use crate::wire::{
    decode_error_body, encode, Decoder, DecoderConfig, Event, Flags, ProtocolVersion,
};

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The socket could not be reached (no server, or not this one).
    #[error("cannot connect to the alloc server at {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The connection failed or timed out.
    #[error("alloc server connection: {0}")]
    Io(#[from] io::Error),
    /// The server answered with an error reply.
    #[error("alloc server refused: {0}")]
    Refused(String),
    /// The reply could not be read.
    #[error("bad reply from the alloc server: {0}")]
    BadReply(String),
}

/// A connection to the alloc server for queries. See the [module docs](self).
#[derive(Debug)]
pub struct QueryClient {
    stream: UnixStream,
    decoder: Decoder,
    next_id: u64,
    out: Vec<u8>,
    buf: Vec<u8>,
    /// Frames read but not asked for yet (a push that came with a reply).
    pending: std::collections::VecDeque<(u16, u64, Flags, Vec<u8>)>,
}

impl QueryClient {
    /// Connects to the native socket at `path`; every later call waits at most `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QueryError> {
        let stream = UnixStream::connect(path)
            .map_err(|source| QueryError::Connect { path: path.display().to_string(), source })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(QueryClient {
            stream,
            decoder: Decoder::new(DecoderConfig { max_body_bytes: 64 << 20, ..Default::default() }),
            next_id: 1,
            out: Vec::new(),
            buf: vec![0; 64 * 1024],
            pending: std::collections::VecDeque::new(),
        })
    }

    /// Usage of `device`, or of every device when `None`.
    pub fn usage(&mut self, device: Option<i32>) -> Result<proto::UsageReply, QueryError> {
        self.call(MsgType::Query, &proto::UsageRequest { device })
    }

    /// Device facts: one device, or all of them and their count with `-1`.
    pub fn device_info(&mut self, device: i32) -> Result<proto::DeviceInfoReply, QueryError> {
        self.call(MsgType::DeviceInfoQuery, &proto::DeviceInfoRequest { device })
    }

    /// What each process holds, per device.
    pub fn processes(&mut self) -> Result<proto::ProcessUsageReply, QueryError> {
        self.call(MsgType::ProcessQuery, &proto::ProcessUsageRequest {})
    }

    /// Every live entry (buffers, CBs, kernels) and the report text.
    pub fn dump(&mut self) -> Result<proto::DumpReply, QueryError> {
        self.call(MsgType::DumpRemaining, &proto::DumpRequest {})
    }

    /// The latency probe's report since the previous one (and resets it); refused when the
    /// daemon runs with `[alloc] latency_probe = false`.
    pub fn latency(&mut self) -> Result<proto::LatencyReply, QueryError> {
        self.call(MsgType::LatencyReport, &proto::LatencyRequest {})
    }

    /// Subscribes to usage changes; then read them with [`next_push`](Self::next_push).
    pub fn subscribe(&mut self, min_interval_ms: u32) -> Result<proto::UsageReply, QueryError> {
        self.call(MsgType::Subscribe, &proto::SubscribeRequest { min_interval_ms })
    }

    /// The next usage push (after [`subscribe`](Self::subscribe)); times out as every call.
    pub fn next_push(&mut self) -> Result<proto::UsagePush, QueryError> {
        let (_, body) = self.read_frame(|t, _| t == MsgType::UsagePush.code())?;
        proto::UsagePush::decode(body.as_slice()).map_err(|e| QueryError::BadReply(e.to_string()))
    }

    fn call<Req: Message, Rep: Message + Default>(
        &mut self,
        kind: MsgType,
        req: &Req,
    ) -> Result<Rep, QueryError> {
        let id = self.next_id;
        self.next_id += 1;
        self.out.clear();
        encode(
            ProtocolVersion::V2,
            kind.code(),
            Flags::EMPTY,
            id,
            &req.encode_to_vec(),
            &mut self.out,
        );
        self.stream.write_all(&self.out)?;
        let (flags, body) = self.read_frame(|t, msg_id| t == kind.code() && msg_id == id)?;
        if flags.contains(Flags::ERROR) {
            let text = decode_error_body(&body)
                .map(|(_, t)| t.to_owned())
                .unwrap_or_else(|_| "unreadable error reply".into());
            return Err(QueryError::Refused(text));
        }
        Rep::decode(body.as_slice()).map_err(|e| QueryError::BadReply(e.to_string()))
    }

    /// Reads frames until one `wanted` accepts (pushes in between are skipped).
    fn read_frame(
        &mut self,
        wanted: impl Fn(u16, u64) -> bool,
    ) -> Result<(Flags, Vec<u8>), QueryError> {
        loop {
            if let Some(i) = self.pending.iter().position(|(t, id, _, _)| wanted(*t, *id)) {
                let (_, _, flags, body) = self.pending.remove(i).expect("position is in range");
                return Ok((flags, body));
            }
            let n = self.stream.read(&mut self.buf)?;
            if n == 0 {
                return Err(QueryError::Io(io::Error::from(io::ErrorKind::UnexpectedEof)));
            }
            let mut bad = None;
            let pending = &mut self.pending;
            let result = self.decoder.feed(&self.buf[..n], |event| match event {
                Event::Frame(f) => pending.push_back((
                    f.header.msg_type,
                    f.header.msg_id,
                    f.header.flags,
                    f.body.to_vec(),
                )),
                Event::Error { error, .. } => bad = Some(error.to_string()),
            });
            if let Err(e) = result {
                return Err(QueryError::BadReply(e.to_string()));
            }
            if let Some(bad) = bad {
                return Err(QueryError::BadReply(bad));
            }
            // Bounded: a server that pushes faster than we ask keeps only the newest.
            while self.pending.len() > 1024 {
                self.pending.pop_front();
            }
        }
    }
}
