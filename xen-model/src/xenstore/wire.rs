//! The xenstore wire format (xen/include/public/io/xs_wire.h): a 16-byte header of four
//! little-endian u32 (type, req_id, tx_id, len) followed by `len` payload bytes, in both
//! directions, on the ring and on the Unix socket alike.

use serde::{Deserialize, Serialize};

/// Size of `struct xsd_sockmsg`.
pub const HEADER_LEN: usize = 16;
/// XENSTORE_PAYLOAD_MAX: the largest payload either side may send.
pub const PAYLOAD_MAX: usize = 4096;
/// XENSTORE_ABS_PATH_MAX.
pub const ABS_PATH_MAX: usize = 3072;
/// XENSTORE_REL_PATH_MAX.
pub const REL_PATH_MAX: usize = 2048;

/// Message types (enum xsd_sockmsg_type). Type 20 (RESTRICT) was removed from Xen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u32)]
pub enum MsgType {
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    ResetWatches = 21,
    DirectoryPart = 22,
    GetFeature = 23,
    SetFeature = 24,
    GetQuota = 25,
    SetQuota = 26,
}

impl MsgType {
    /// Decodes a raw type; `None` for values Xen does not define (20, >= 27).
    pub fn from_u32(v: u32) -> Option<Self> {
        use MsgType::*;
        Some(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            23 => GetFeature,
            24 => SetFeature,
            25 => GetQuota,
            26 => SetQuota,
            _ => return None,
        })
    }
}

/// A message header as it travels on the wire. `msg_type` stays raw so that unknown
/// types can be answered with ENOSYS rather than treated as a framing error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub msg_type: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    /// Decodes a header; a length above PAYLOAD_MAX is a protocol violation.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, WireError> {
        let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let h = Header { msg_type: word(0), req_id: word(4), tx_id: word(8), len: word(12) };
        if h.len as usize > PAYLOAD_MAX {
            return Err(WireError::PayloadTooLong(h.len));
        }
        Ok(h)
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.msg_type.to_le_bytes());
        out[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        out[12..16].copy_from_slice(&self.len.to_le_bytes());
        out
    }
}

/// A complete packet: header fields plus payload (at most PAYLOAD_MAX bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet {
    pub msg_type: u32,
    pub req_id: u32,
    pub tx_id: u32,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Packet {
    pub fn new(msg_type: MsgType, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Self {
        Packet { msg_type: msg_type as u32, req_id, tx_id, payload }
    }

    pub fn kind(&self) -> Option<MsgType> {
        MsgType::from_u32(self.msg_type)
    }

    pub fn header(&self) -> Header {
        // The core never builds a payload above PAYLOAD_MAX, so this fits in u32.
        Header { msg_type: self.msg_type, req_id: self.req_id, tx_id: self.tx_id, len: self.payload.len() as u32 }
    }

    /// Header followed by payload, ready for the ring or the socket.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        self.encode_into(&mut out);
        out
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header().encode());
        out.extend_from_slice(&self.payload);
    }

    /// Total size on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Framing errors. They are values: the transport decides to drop the peer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum WireError {
    #[error("payload length {0} exceeds XENSTORE_PAYLOAD_MAX (4096)")]
    PayloadTooLong(u32),
}

/// Reassembles packets from a byte stream that may split them anywhere.
/// After an error the assembler stays failed; the connection must be dropped or reset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketAssembler {
    #[serde(with = "serde_bytes")]
    buf: Vec<u8>,
    header: Option<Header>,
    failed: Option<WireError>,
}

impl PacketAssembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the packets completed by them (possibly none).
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Packet>, WireError> {
        let mut done = Vec::new();
        while !bytes.is_empty() {
            if let Some(p) = self.push_some(&mut bytes)? {
                done.push(p);
            }
        }
        Ok(done)
    }

    /// Consumes bytes from the front of `bytes` until one packet completes or the input
    /// ends; returns that packet. Lets a transport stop after each packet (for example
    /// to honour an outstanding-request quota) and keep the rest of its input.
    pub fn push_some(&mut self, bytes: &mut &[u8]) -> Result<Option<Packet>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while !bytes.is_empty() {
            let want = match self.header {
                None => HEADER_LEN - self.buf.len(),
                Some(h) => h.len as usize - self.buf.len(),
            };
            let take = want.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            *bytes = &bytes[take..];
            if let Some(p) = self.try_complete()? {
                return Ok(Some(p));
            }
        }
        // A header with len 0 completes without further bytes.
        self.try_complete()
    }

    fn try_complete(&mut self) -> Result<Option<Packet>, WireError> {
        if self.header.is_none() && self.buf.len() == HEADER_LEN {
            let mut raw = [0u8; HEADER_LEN];
            raw.copy_from_slice(&self.buf);
            match Header::decode(&raw) {
                Ok(h) => {
                    self.header = Some(h);
                    self.buf.clear();
                }
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        match self.header {
            Some(h) if self.buf.len() == h.len as usize => {
                self.header = None;
                let payload = std::mem::take(&mut self.buf);
                Ok(Some(Packet { msg_type: h.msg_type, req_id: h.req_id, tx_id: h.tx_id, payload }))
            }
            _ => Ok(None),
        }
    }

    /// True when no partial packet is buffered.
    pub fn is_idle(&self) -> bool {
        self.header.is_none() && self.buf.is_empty() && self.failed.is_none()
    }

    /// Drops any partial packet and a previous failure (ring reconnection).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(ty: u32, req: u32, tx: u32, payload: &[u8]) -> Vec<u8> {
        // Built by hand, independently of Header::encode.
        let mut v = Vec::new();
        for w in [ty, req, tx, payload.len() as u32] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn header_layout_is_four_le_u32() {
        let h = Header { msg_type: 2, req_id: 0x01020304, tx_id: 7, len: 5 };
        assert_eq!(h.encode(), [2, 0, 0, 0, 4, 3, 2, 1, 7, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn type_numbers_match_xs_wire_h() {
        assert_eq!(MsgType::ResetWatches as u32, 21);
        assert_eq!(MsgType::from_u32(20), None);
        assert_eq!(MsgType::from_u32(26), Some(MsgType::SetQuota));
        assert_eq!(MsgType::from_u32(27), None);
        assert_eq!(MsgType::from_u32(0xffff), None);
    }

    #[test]
    fn assembles_packets_split_at_every_byte() {
        let mut stream = raw(2, 9, 0, b"/a\0");
        stream.extend(raw(1, 10, 3, b""));
        stream.extend(raw(11, 11, 0, b"/b\0xyz"));
        for chunk in 1..stream.len() {
            let mut asm = PacketAssembler::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                got.extend(asm.push(piece).unwrap());
            }
            assert_eq!(got.len(), 3, "chunk size {chunk}");
            assert_eq!(got[0], Packet { msg_type: 2, req_id: 9, tx_id: 0, payload: b"/a\0".to_vec() });
            assert_eq!(got[1], Packet { msg_type: 1, req_id: 10, tx_id: 3, payload: vec![] });
            assert_eq!(got[2].payload, b"/b\0xyz");
            assert!(asm.is_idle());
        }
    }

    #[test]
    fn max_payload_accepted_and_one_more_rejected() {
        let mut asm = PacketAssembler::new();
        let ok = raw(11, 1, 0, &vec![b'x'; PAYLOAD_MAX]);
        assert_eq!(asm.push(&ok).unwrap().len(), 1);
        let mut bad = raw(11, 1, 0, b"");
        bad[12..16].copy_from_slice(&4097u32.to_le_bytes());
        assert_eq!(asm.push(&bad), Err(WireError::PayloadTooLong(4097)));
        // Stays failed until reset.
        assert!(asm.push(&raw(2, 1, 0, b"/\0")).is_err());
        asm.reset();
        assert_eq!(asm.push(&raw(2, 1, 0, b"/\0")).unwrap().len(), 1);
    }

    #[test]
    fn push_some_stops_after_one_packet() {
        let mut stream = raw(2, 1, 0, b"a\0");
        stream.extend(raw(2, 2, 0, b"b\0"));
        let mut asm = PacketAssembler::new();
        let mut rest: &[u8] = &stream;
        let p = asm.push_some(&mut rest).unwrap().unwrap();
        assert_eq!(p.req_id, 1);
        assert_eq!(rest.len(), HEADER_LEN + 2);
        assert_eq!(asm.push_some(&mut rest).unwrap().unwrap().req_id, 2);
        assert!(rest.is_empty());
    }
}
