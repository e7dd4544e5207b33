//! Serde helpers for byte buffers inside containers, so that they encode as
//! MessagePack `bin` (one length and the bytes) rather than an array of
//! integers. State hashes and snapshots encode whole pages: as integers a
//! 4 KiB page costs a serializer call per byte and up to twice the space.
//! A bare `Vec<u8>` field takes `#[serde(with = "serde_bytes")]`; these
//! cover the shapes serde_bytes does not (and hashes, `[u8; 32]`, which
//! serde encodes as 32 integers).

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_bytes::{ByteBuf, Bytes};

/// `Vec<(K, B)>` where B is `Vec<u8>` or a fixed array such as a hash
/// (`[u8; 32]`): a sequence of (key, bin) pairs. A bin that does not fit
/// B (the wrong length for an array) does not decode.
pub mod pairs {
    use super::*;

    pub fn serialize<K: Serialize, B: AsRef<[u8]>, S: Serializer>(v: &[(K, B)], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for (k, bytes) in v {
            seq.serialize_element(&(k, Bytes::new(bytes.as_ref())))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, K: Deserialize<'de>, B: TryFrom<Vec<u8>>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(K, B)>, D::Error> {
        let v: Vec<(K, ByteBuf)> = Deserialize::deserialize(d)?;
        v.into_iter()
            .map(|(k, b)| {
                let len = b.len();
                let bytes = B::try_from(b.into_vec())
                    .map_err(|_| serde::de::Error::invalid_length(len, &"a bin of the field's length"))?;
                Ok((k, bytes))
            })
            .collect()
    }
}

/// `Vec<Vec<u8>>`: a sequence of bins.
pub mod list {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for bytes in v {
            seq.serialize_element(Bytes::new(bytes))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Vec<ByteBuf> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(ByteBuf::into_vec).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Held {
        #[serde(with = "pairs")]
        pages: Vec<(u64, Vec<u8>)>,
        #[serde(with = "list")]
        frames: Vec<Vec<u8>>,
    }

    /// The bytes the MessagePack specification gives: fixarray 0x9N,
    /// positive fixint, bin 8 (0xc4, length, bytes), bin 16 (0xc5, length
    /// big-endian, bytes).
    #[test]
    fn buffers_encode_as_msgpack_bin() {
        let held = Held { pages: vec![(5, b"abc".to_vec())], frames: vec![vec![], vec![7; 300]] };
        let got = rmp_serde::to_vec(&held).unwrap();
        let mut want = vec![0x92, 0x91, 0x92, 0x05, 0xc4, 0x03, b'a', b'b', b'c', 0x92, 0xc4, 0x00, 0xc5, 0x01, 0x2c];
        want.extend([7; 300]);
        assert_eq!(got, want);
        assert_eq!(rmp_serde::from_slice::<Held>(&got).unwrap(), held);
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Hashes {
        #[serde(with = "pairs")]
        by_name: Vec<(String, [u8; 4])>,
    }

    #[test]
    fn fixed_arrays_encode_as_bins_of_their_length() {
        let h = Hashes { by_name: vec![("a".into(), [1, 2, 3, 0xff])] };
        let got = rmp_serde::to_vec(&h).unwrap();
        // [[["a", bin 8 of 4 bytes]]]: fixarray, fixarray, fixarray, fixstr "a".
        assert_eq!(got, [0x91, 0x91, 0x92, 0xa1, b'a', 0xc4, 0x04, 1, 2, 3, 0xff]);
        assert_eq!(rmp_serde::from_slice::<Hashes>(&got).unwrap(), h);
        // A bin of another length is an error, not a panic or a short hash.
        let short = [0x91, 0x91, 0x92, 0xa1, b'a', 0xc4, 0x03, 1, 2, 3];
        assert!(rmp_serde::from_slice::<Hashes>(&short).is_err());
    }

    #[test]
    fn integer_array_encodings_still_decode() {
        // [[5, [97]]]: a pair whose bytes are an array of integers, as
        // serde encodes a plain Vec<u8>.
        let old = [0x91, 0x92, 0x05, 0x91, 0x61];
        let r: Result<Vec<(u64, Vec<u8>)>, _> = pairs::deserialize(&mut rmp_serde::Deserializer::new(&old[..]));
        assert_eq!(r.unwrap(), vec![(5, b"a".to_vec())]);
    }
}
