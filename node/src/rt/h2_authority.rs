//! Makes the Workload API accept HTTP/2 requests whose `:authority` is not a valid URI
//! authority, as grpc-python (and so py-spiffe) sends over Unix sockets.
//!
//! grpc-python names a Unix-socket channel's authority after the percent-encoded socket path
//! (e.g. `tmp%2Fagent.sock`). The HTTP/2 server under tonic resets every stream whose
//! `:authority` does not parse as an authority, so such clients could not fetch anything. On a
//! Unix socket the authority carries no meaning, so [`AuthorityFix`] sits between the accepted
//! socket and the HTTP/2 server and replaces an unparsable `:authority` with
//! [`REPLACEMENT_AUTHORITY`] — the value the Go and Rust SPIFFE clients send anyway.
//!
//! Only the client-to-server direction is touched. Frames other than header blocks pass through
//! byte for byte. Header blocks (HEADERS + CONTINUATION) are HPACK-decoded with a decoder that
//! follows the client's dynamic table, and every block is re-encoded for the server with an
//! encoder of our own (the server's decoder then follows our table, not the client's), so all
//! blocks go through the codec, not only the rewritten ones. Padding is dropped; priority
//! fields are kept.
//!
//! Limits: a frame's payload is at most [`FRAME_PAYLOAD_MAX`] (the HTTP/2 default the server
//! keeps), an encoded header block at most [`HEADER_BLOCK_MAX`] and a decoded header list at
//! most [`HEADER_LIST_MAX`] bytes (counted as RFC 9113 §6.5.2 does). A client that breaks a limit
//! or the framing loses its connection with an `InvalidData` error; nothing panics.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::{Connected, UdsConnectInfo};

/// What an unparsable `:authority` becomes.
pub const REPLACEMENT_AUTHORITY: &str = "localhost";
/// Largest frame payload accepted (SETTINGS_MAX_FRAME_SIZE's default, which the server keeps).
pub const FRAME_PAYLOAD_MAX: usize = 16_384;
/// Largest encoded header block (HEADERS plus its CONTINUATION frames).
pub const HEADER_BLOCK_MAX: usize = 64 * 1024;
/// Largest decoded header list (name + value + 32 per field, RFC 9113 §6.5.2).
pub const HEADER_LIST_MAX: usize = 64 * 1024;
/// The HPACK dynamic table size both sides use (SETTINGS_HEADER_TABLE_SIZE's default; the
/// server does not announce another).
const TABLE_SIZE: usize = 4096;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Why a client's byte stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The connection did not start with the HTTP/2 client preface.
    #[error("not an HTTP/2 connection (bad client preface)")]
    Preface,
    /// A frame broke the HTTP/2 framing rules.
    #[error("malformed HTTP/2 frame: {0}")]
    Frame(&'static str),
    /// A frame, header block or header list was larger than its limit.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The header block did not decode.
    #[error("undecodable header block: {0}")]
    Hpack(String),
}

impl From<RewriteError> for io::Error {
    fn from(e: RewriteError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// A header block being collected (HEADERS, then CONTINUATION frames until END_HEADERS).
#[derive(Debug)]
struct Block {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Inside the client preface, this many bytes still to come.
    Preface(usize),
    /// Collecting a frame header into `pending`.
    FrameHeader,
    /// Passing this many payload bytes of a non-header frame through.
    Passthrough(usize),
    /// Collecting a header frame's payload into `pending`.
    HeaderPayload {
        kind: u8,
        flags: u8,
        stream_id: u32,
        len: usize,
    },
}

/// The sans-IO rewriter: bytes from the client in, bytes for the server out.
pub struct Rewriter {
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    state: State,
    pending: Vec<u8>,
    block: Option<Block>,
    rewritten: u64,
    /// Set once an error was returned: the stream is unusable from then on.
    failed: Option<RewriteError>,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("state", &self.state)
            .field("rewritten", &self.rewritten)
            .finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A rewriter for a new connection (expects the client preface first).
    pub fn new() -> Rewriter {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        let mut encoder = loona_hpack::Encoder::new();
        encoder.set_max_table_size(TABLE_SIZE);
        Rewriter {
            decoder,
            encoder,
            state: State::Preface(PREFACE.len()),
            pending: Vec::new(),
            block: None,
            rewritten: 0,
            failed: None,
        }
    }

    /// How many `:authority` values were replaced so far.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Consumes `input` (any split of the client's byte stream) and appends what the server
    /// should read to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.push_inner(input, out);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn push_inner(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        while !input.is_empty() {
            match self.state {
                State::Preface(left) => {
                    let n = left.min(input.len());
                    let at = PREFACE.len() - left;
                    if input[..n] != PREFACE[at..at + n] {
                        return Err(RewriteError::Preface);
                    }
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if left == n {
                        State::FrameHeader
                    } else {
                        State::Preface(left - n)
                    };
                }
                State::Passthrough(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if left == n {
                        State::FrameHeader
                    } else {
                        State::Passthrough(left - n)
                    };
                }
                State::FrameHeader => {
                    let n = (FRAME_HEADER_LEN - self.pending.len()).min(input.len());
                    self.pending.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.pending.len() == FRAME_HEADER_LEN {
                        let header: [u8; FRAME_HEADER_LEN] = std::mem::take(&mut self.pending)
                            .try_into()
                            .map_err(|_| RewriteError::Frame("frame header"))?;
                        self.frame_header(header, out)?;
                    }
                }
                State::HeaderPayload {
                    kind,
                    flags,
                    stream_id,
                    len,
                } => {
                    let n = (len - self.pending.len()).min(input.len());
                    self.pending.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.pending.len() == len {
                        let payload = std::mem::take(&mut self.pending);
                        self.state = State::FrameHeader;
                        self.header_frame(kind, flags, stream_id, &payload, out)?;
                    }
                }
            }
        }
        // A zero-length header frame completes without any payload byte arriving.
        if let State::HeaderPayload {
            kind,
            flags,
            stream_id,
            len: 0,
        } = self.state
        {
            self.state = State::FrameHeader;
            self.header_frame(kind, flags, stream_id, &[], out)?;
        }
        Ok(())
    }

    fn frame_header(
        &mut self,
        header: [u8; FRAME_HEADER_LEN],
        out: &mut Vec<u8>,
    ) -> Result<(), RewriteError> {
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let kind = header[3];
        let flags = header[4];
        let stream_id =
            u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        if len > FRAME_PAYLOAD_MAX {
            return Err(RewriteError::TooLarge {
                what: "a frame payload",
                len,
                max: FRAME_PAYLOAD_MAX,
            });
        }
        if self.block.is_some() && kind != TYPE_CONTINUATION {
            return Err(RewriteError::Frame(
                "a header block was interrupted by another frame",
            ));
        }
        match kind {
            TYPE_HEADERS | TYPE_CONTINUATION => {
                self.state = State::HeaderPayload {
                    kind,
                    flags,
                    stream_id,
                    len,
                };
            }
            // A client may not push; passing its header block on would desynchronise HPACK.
            TYPE_PUSH_PROMISE => return Err(RewriteError::Frame("PUSH_PROMISE from a client")),
            _ => {
                out.extend_from_slice(&header);
                self.state = if len == 0 {
                    State::FrameHeader
                } else {
                    State::Passthrough(len)
                };
            }
        }
        Ok(())
    }

    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream_id: u32,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RewriteError> {
        if kind == TYPE_HEADERS {
            if stream_id == 0 {
                return Err(RewriteError::Frame("HEADERS on stream 0"));
            }
            let mut start = 0;
            let mut pad = 0;
            if flags & FLAG_PADDED != 0 {
                pad = usize::from(
                    *payload
                        .first()
                        .ok_or(RewriteError::Frame("PADDED HEADERS without a pad length"))?,
                );
                start = 1;
            }
            let mut priority = None;
            if flags & FLAG_PRIORITY != 0 {
                let p: [u8; 5] = payload
                    .get(start..start + 5)
                    .and_then(|p| p.try_into().ok())
                    .ok_or(RewriteError::Frame("HEADERS too short for its priority"))?;
                priority = Some(p);
                start += 5;
            }
            let end = payload
                .len()
                .checked_sub(pad)
                .filter(|end| *end >= start)
                .ok_or(RewriteError::Frame("HEADERS padding longer than the frame"))?;
            self.block = Some(Block {
                stream_id,
                end_stream: flags & FLAG_END_STREAM != 0,
                priority,
                fragment: payload[start..end].to_vec(),
            });
        } else {
            let block = self
                .block
                .as_mut()
                .filter(|b| b.stream_id == stream_id)
                .ok_or(RewriteError::Frame("CONTINUATION without a header block"))?;
            block.fragment.extend_from_slice(payload);
        }
        let size = self.block.as_ref().map_or(0, |b| b.fragment.len());
        if size > HEADER_BLOCK_MAX {
            return Err(RewriteError::TooLarge {
                what: "a header block",
                len: size,
                max: HEADER_BLOCK_MAX,
            });
        }
        if flags & FLAG_END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.finish_block(block, out)?;
            }
        }
        Ok(())
    }

    /// Decodes a complete block, fixes `:authority`, re-encodes it and emits the frames.
    fn finish_block(&mut self, block: Block, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut list_size = 0usize;
        let decoder = &mut self.decoder;
        let fragment = &block.fragment;
        // The decoder is third-party code fed by the peer: a panic in it must not take the
        // agent down, so it is contained and reported as a decoding error.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decoder.decode_with_cb(fragment, |name, value| {
                list_size = list_size.saturating_add(name.len() + value.len() + 32);
                if list_size <= HEADER_LIST_MAX {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
        }));
        match decoded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(RewriteError::Hpack(format!("{e:?}"))),
            Err(_) => return Err(RewriteError::Hpack("the HPACK decoder failed".into())),
        }
        if list_size > HEADER_LIST_MAX {
            return Err(RewriteError::TooLarge {
                what: "a header list",
                len: list_size,
                max: HEADER_LIST_MAX,
            });
        }
        for (name, value) in &mut fields {
            if name.as_slice() == b":authority" && !valid_authority(value) {
                *value = REPLACEMENT_AUTHORITY.as_bytes().to_vec();
                self.rewritten += 1;
            }
        }
        let encoded = self
            .encoder
            .encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        emit_block(&block, &encoded, out);
        Ok(())
    }
}

/// Whether the HTTP/2 server accepts `value` as an `:authority`.
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// Writes `encoded` as a HEADERS frame plus CONTINUATION frames, each within
/// [`FRAME_PAYLOAD_MAX`].
fn emit_block(block: &Block, encoded: &[u8], out: &mut Vec<u8>) {
    let prio_len = if block.priority.is_some() { 5 } else { 0 };
    let first_len = encoded.len().min(FRAME_PAYLOAD_MAX - prio_len);
    let (first, mut rest) = encoded.split_at(first_len);
    let mut flags = 0;
    if block.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if block.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    let mut payload = Vec::with_capacity(first_len + prio_len);
    if let Some(p) = block.priority {
        payload.extend_from_slice(&p);
    }
    payload.extend_from_slice(first);
    write_frame(out, TYPE_HEADERS, flags, block.stream_id, &payload);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(FRAME_PAYLOAD_MAX));
        rest = tail;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        write_frame(out, TYPE_CONTINUATION, flags, block.stream_id, chunk);
    }
}

fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    // Payloads are at most FRAME_PAYLOAD_MAX (< 2^24) by construction.
    let len = payload.len().to_be_bytes();
    out.extend_from_slice(&len[len.len() - 3..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A server-side connection whose client-to-server bytes go through a [`Rewriter`].
#[derive(Debug)]
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    out: Vec<u8>,
    out_pos: usize,
    scratch: Box<[u8]>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix {
            inner,
            rewriter: Rewriter::new(),
            out: Vec::new(),
            out_pos: 0,
            scratch: vec![0u8; 16 * 1024].into_boxed_slice(),
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                continue;
            }
            let before = this.rewriter.rewritten();
            this.rewriter.push(read.filled(), &mut this.out)?;
            if before == 0 && this.rewriter.rewritten() > 0 {
                tracing::debug!(
                    "a Workload API client sent an invalid :authority (grpc-python names Unix sockets so); treating it as {REPLACEMENT_AUTHORITY}"
                );
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for AuthorityFix<tokio::net::UnixStream> {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> UdsConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a server-bound byte stream into frames: (type, flags, stream, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..24], PREFACE);
        let mut rest = &bytes[24..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            assert!(len <= FRAME_PAYLOAD_MAX, "frame of {len} bytes");
            let sid = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            out.push((rest[3], rest[4], sid, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        out
    }

    /// A decoded header block: stream, flags of its HEADERS frame, fields.
    type Decoded = (u32, u8, Vec<(String, String)>);

    /// Decodes the header blocks of a server-bound stream the way the server does.
    fn server_view(bytes: &[u8]) -> Vec<Decoded> {
        let mut dec = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut current: Option<(u32, u8, Vec<u8>)> = None;
        for (kind, flags, sid, payload) in frames(bytes) {
            match kind {
                TYPE_HEADERS => {
                    assert!(current.is_none());
                    assert_eq!(flags & FLAG_PADDED, 0, "padding is dropped");
                    let skip = if flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                    current = Some((sid, flags, payload[skip..].to_vec()));
                }
                TYPE_CONTINUATION => {
                    let c = current.as_mut().expect("continuation after headers");
                    assert_eq!(c.0, sid);
                    c.2.extend_from_slice(&payload);
                }
                _ => continue,
            }
            if flags & FLAG_END_HEADERS != 0 {
                let (sid, first_flags, block) = current.take().expect("block");
                let fields = dec
                    .decode(&block)
                    .expect("server decodes")
                    .into_iter()
                    .map(|(n, v)| {
                        (
                            String::from_utf8(n).expect("utf8"),
                            String::from_utf8(v).expect("utf8"),
                        )
                    })
                    .collect();
                blocks.push((sid, first_flags, fields));
            }
        }
        blocks
    }

    fn frame(kind: u8, flags: u8, sid: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, kind, flags, sid, payload);
        out
    }

    fn request(enc: &mut loona_hpack::Encoder<'_>, authority: &str, path: &str) -> Vec<u8> {
        enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", authority.as_bytes()),
            (b"workload.spiffe.io", b"true"),
        ])
    }

    fn run(input: &[u8], chunk: usize) -> Result<(Vec<u8>, u64), RewriteError> {
        let mut r = Rewriter::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            r.push(piece, &mut out)?;
        }
        Ok((out, r.rewritten()))
    }

    fn client_stream() -> Vec<u8> {
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        let b1 = request(
            &mut enc,
            "tmp%2Fagent.sock",
            "/SpiffeWorkloadAPI/FetchX509SVID",
        );
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b1));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, &[0, 0, 0, 0, 0])); // DATA
                                                                        // Second request: the encoder now refers to its dynamic table for most fields.
        let b2 = request(
            &mut enc,
            "tmp%2Fagent.sock",
            "/SpiffeWorkloadAPI/FetchJWTSVID",
        );
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &b2,
        ));
        let b3 = request(&mut enc, "localhost", "/SpiffeWorkloadAPI/FetchJWTBundles");
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 5, &b3));
        input
    }

    #[test]
    fn invalid_authorities_become_localhost_across_the_dynamic_table() {
        let input = client_stream();
        let (out, rewritten) = run(&input, input.len()).expect("rewrites");
        assert_eq!(rewritten, 2);
        let blocks = server_view(&out);
        assert_eq!(blocks.len(), 3);
        for (i, (sid, _, fields)) in blocks.iter().enumerate() {
            assert_eq!(*sid, 2 * i as u32 + 1);
            let authority = fields
                .iter()
                .find(|(n, _)| n == ":authority")
                .expect("authority");
            assert_eq!(authority.1, "localhost");
            assert!(fields
                .iter()
                .any(|(n, v)| n == "workload.spiffe.io" && v == "true"));
        }
        assert!(blocks[1]
            .2
            .iter()
            .any(|(n, v)| n == ":path" && v.ends_with("FetchJWTSVID")));
        assert_eq!(blocks[1].1 & FLAG_END_STREAM, FLAG_END_STREAM);
        // Non-header frames pass through byte for byte (SETTINGS and DATA).
        let passed: Vec<_> = frames(&out)
            .into_iter()
            .filter(|f| f.0 != TYPE_HEADERS)
            .collect();
        assert_eq!(passed[0], (0x4, 0, 0, vec![0, 3, 0, 0, 0, 100]));
        assert_eq!(passed[1], (0x0, FLAG_END_STREAM, 1, vec![0, 0, 0, 0, 0]));
    }

    #[test]
    fn any_split_of_the_input_gives_the_same_output() {
        let input = client_stream();
        let (whole, _) = run(&input, input.len()).expect("whole");
        for chunk in [1, 2, 7, 9, 10, 24, 25, 100] {
            assert_eq!(run(&input, chunk).expect("split").0, whole, "chunk {chunk}");
        }
    }

    #[test]
    fn huffman_coded_blocks_from_the_rfc_decode() {
        // RFC 7541 C.4.1: a request with Huffman-coded strings; authority www.example.com.
        let block = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        let (out, rewritten) = run(&input, 3).expect("decodes");
        assert_eq!(rewritten, 0, "a valid authority is left alone");
        let blocks = server_view(&out);
        assert!(blocks[0]
            .2
            .contains(&(":authority".into(), "www.example.com".into())));
    }

    #[test]
    fn padding_priority_and_continuations_are_handled() {
        let mut enc = loona_hpack::Encoder::new();
        let block = request(&mut enc, "a%2Fb", "/x");
        let (first, second) = block.split_at(block.len() / 2);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        payload.extend_from_slice(first);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY,
            7,
            &payload,
        ));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 7, second));
        let (out, rewritten) = run(&input, 5).expect("rewrites");
        assert_eq!(rewritten, 1);
        let f = frames(&out);
        assert_eq!(f.len(), 1, "one HEADERS frame after reassembly");
        assert_eq!(f[0].1, FLAG_PRIORITY | FLAG_END_HEADERS);
        assert_eq!(&f[0].3[..5], &[0, 0, 0, 0, 16]);
        let blocks = server_view(&out);
        assert!(blocks[0]
            .2
            .contains(&(":authority".into(), "localhost".into())));
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let big = "v".repeat(20_000);
        let mut enc = loona_hpack::Encoder::new();
        let block = enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"x%2Fy"),
            (b"x-big", big.as_bytes()),
        ]);
        let mut input = PREFACE.to_vec();
        let (a, b) = block.split_at(FRAME_PAYLOAD_MAX);
        input.extend(frame(TYPE_HEADERS, 0, 1, a));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b));
        let (out, _) = run(&input, 4096).expect("rewrites");
        let f = frames(&out);
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].0, f[0].1), (TYPE_HEADERS, 0));
        assert_eq!((f[1].0, f[1].1), (TYPE_CONTINUATION, FLAG_END_HEADERS));
        let blocks = server_view(&out);
        assert!(blocks[0].2.contains(&("x-big".into(), big)));
    }

    #[test]
    fn broken_input_is_refused_without_panicking() {
        let with = |frames_: &[Vec<u8>]| {
            let mut input = PREFACE.to_vec();
            for f in frames_ {
                input.extend_from_slice(f);
            }
            run(&input, 11).map(|_| ())
        };
        assert_eq!(
            run(b"GET / HTTP/1.1\r\n", 4).map(|_| ()),
            Err(RewriteError::Preface)
        );
        let cont = frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82]);
        assert!(matches!(with(&[cont]), Err(RewriteError::Frame(_))));
        let unfinished = frame(TYPE_HEADERS, 0, 1, &[0x82]);
        let data = frame(0x0, 0, 1, &[1]);
        assert!(matches!(
            with(&[unfinished.clone(), data]),
            Err(RewriteError::Frame(_))
        ));
        let other_stream = frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[0x84]);
        assert!(matches!(
            with(&[unfinished, other_stream]),
            Err(RewriteError::Frame(_))
        ));
        let bad_index = frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0x7f]);
        assert!(matches!(with(&[bad_index]), Err(RewriteError::Hpack(_))));
        let bad_pad = frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_PADDED, 1, &[9, 0x82]);
        assert!(matches!(with(&[bad_pad]), Err(RewriteError::Frame(_))));
        let stream0 = frame(TYPE_HEADERS, FLAG_END_HEADERS, 0, &[0x82]);
        assert!(matches!(with(&[stream0]), Err(RewriteError::Frame(_))));
        let push = frame(TYPE_PUSH_PROMISE, FLAG_END_HEADERS, 1, &[0, 0, 0, 2, 0x82]);
        assert!(matches!(with(&[push]), Err(RewriteError::Frame(_))));
        let mut oversize = PREFACE.to_vec();
        oversize.extend_from_slice(&[0x01, 0x00, 0x00, 0x0, 0, 0, 0, 0, 1]);
        assert!(matches!(
            run(&oversize, 100),
            Err(RewriteError::TooLarge { .. })
        ));
        // Five 16 KiB fragments exceed HEADER_BLOCK_MAX.
        let mut many = vec![frame(TYPE_HEADERS, 0, 1, &vec![0u8; FRAME_PAYLOAD_MAX])];
        for _ in 0..4 {
            many.push(frame(
                TYPE_CONTINUATION,
                0,
                1,
                &vec![0u8; FRAME_PAYLOAD_MAX],
            ));
        }
        assert!(matches!(
            with(&many),
            Err(RewriteError::TooLarge {
                what: "a header block",
                ..
            })
        ));
        // Each 1-byte index of a ~4 KiB table entry expands the list past HEADER_LIST_MAX.
        let mut block = Vec::new();
        let value = vec![b'a'; 4000];
        block.extend(loona_hpack::Encoder::new().encode([(&b"x-a"[..], value.as_slice())]));
        block.extend(std::iter::repeat_n(0xbe, 40)); // index 62: the entry just added
        let bomb = frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block);
        assert!(matches!(
            with(&[bomb]),
            Err(RewriteError::TooLarge {
                what: "a header list",
                ..
            })
        ));
    }

    #[test]
    fn an_error_sticks() {
        let mut r = Rewriter::new();
        let mut out = Vec::new();
        assert!(r.push(b"XXX", &mut out).is_err());
        assert!(r.push(&PREFACE[..], &mut out).is_err());
    }
}
