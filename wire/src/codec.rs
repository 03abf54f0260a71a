//! The versioned binary codec for node↔node and agent↔server messages and Raft payloads.
//!
//! A frame is one version byte ([`CODEC_VERSION`]) followed by the bincode 2 (serde, standard
//! config) encoding of the value. Decoding checks the size limit first, then the version, then
//! decodes with an allocation limit and requires every byte to be consumed. It never panics:
//! every malformed input is an [`Error`].

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// The codec version written in the first byte of every frame.
/// Version 2: single-use join tokens bound to their consumer's key and server tokens to a
/// node ID, agent renewal records, removed servers (issue 20).
pub const CODEC_VERSION: u8 = 2;
/// Largest frame, in bytes, including the version byte.
pub const MESSAGE_BYTES_MAX: usize = 4 << 20;
/// Largest state-machine snapshot, in bytes (snapshots travel in chunks, never as one message).
pub const SNAPSHOT_BYTES_MAX: usize = 1 << 30;

fn config<const LIMIT: usize>() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// Encodes `value` as one frame of at most [`MESSAGE_BYTES_MAX`] bytes.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    encode_limited::<T, MESSAGE_BYTES_MAX>(value)
}

/// Decodes one frame produced by [`encode`].
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, Error> {
    decode_limited::<T, MESSAGE_BYTES_MAX>(frame)
}

/// Encodes a snapshot (same format as [`encode`], limit [`SNAPSHOT_BYTES_MAX`]).
pub fn encode_snapshot<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    encode_limited::<T, SNAPSHOT_BYTES_MAX>(value)
}

/// Decodes a snapshot produced by [`encode_snapshot`].
pub fn decode_snapshot<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    decode_limited::<T, SNAPSHOT_BYTES_MAX>(bytes)
}

fn encode_limited<T: Serialize, const LIMIT: usize>(value: &T) -> Result<Vec<u8>, Error> {
    let mut out = vec![CODEC_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, config::<LIMIT>())
        .map_err(|e| Error::Encode(e.to_string()))?;
    if out.len() > LIMIT {
        return Err(Error::MessageTooLarge {
            bytes: out.len(),
            bytes_max: LIMIT,
        });
    }
    Ok(out)
}

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(frame: &[u8]) -> Result<T, Error> {
    if frame.len() > LIMIT {
        return Err(Error::MessageTooLarge {
            bytes: frame.len(),
            bytes_max: LIMIT,
        });
    }
    let (&version, body) = frame.split_first().ok_or(Error::Truncated)?;
    if version != CODEC_VERSION {
        return Err(Error::UnsupportedVersion {
            version,
            supported: CODEC_VERSION,
        });
    }
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(body, config::<LIMIT>())
        .map_err(|e| match e {
            bincode::error::DecodeError::UnexpectedEnd { .. } => Error::Truncated,
            other => Error::Decode(other.to_string()),
        })?;
    if used != body.len() {
        return Err(Error::TrailingBytes {
            bytes: body.len() - used,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{Bundle, JwtAuthority, PublicJwk};
    use crate::entry::tests::sample_entry;
    use crate::{RegistrationEntry, SpiffeId};
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let e = sample_entry();
        let frame = encode(&e).expect("encode");
        assert_eq!(frame[0], CODEC_VERSION);
        assert_eq!(decode::<RegistrationEntry>(&frame).expect("decode"), e);

        let b = Bundle {
            sequence: Some(9),
            jwt_authorities: vec![JwtAuthority {
                kid: "k".into(),
                key: PublicJwk::Okp {
                    crv: "Ed25519".into(),
                    x: vec![9; 32],
                },
            }],
            ..Bundle::default()
        };
        assert_eq!(
            decode::<Bundle>(&encode(&b).expect("encode")).expect("decode"),
            b
        );
    }

    #[test]
    fn typed_errors() {
        let frame = encode(&sample_entry()).expect("encode");
        assert!(matches!(
            decode::<RegistrationEntry>(&[]),
            Err(Error::Truncated)
        ));
        let mut wrong = frame.clone();
        wrong[0] = 99;
        assert!(matches!(
            decode::<RegistrationEntry>(&wrong),
            Err(Error::UnsupportedVersion { version: 99, .. })
        ));
        assert!(matches!(
            decode::<RegistrationEntry>(&frame[..frame.len() - 1]),
            Err(Error::Truncated)
        ));
        let mut long = frame.clone();
        long.push(0);
        assert!(matches!(
            decode::<RegistrationEntry>(&long),
            Err(Error::TrailingBytes { bytes: 1 })
        ));
        let huge = vec![CODEC_VERSION; MESSAGE_BYTES_MAX + 1];
        assert!(matches!(
            decode::<Vec<u8>>(&huge),
            Err(Error::MessageTooLarge { .. })
        ));
        assert!(matches!(
            encode(&vec![0u8; MESSAGE_BYTES_MAX]),
            Err(Error::MessageTooLarge { .. }) | Err(Error::Encode(_))
        ));
    }

    #[test]
    fn invalid_ids_inside_a_frame_are_rejected() {
        // A peer cannot smuggle an invalid SPIFFE ID through the codec: decoding parses it.
        let frame = encode(&"spiffe://Example.org/x".to_string()).expect("encode");
        assert!(matches!(decode::<SpiffeId>(&frame), Err(Error::Decode(_))));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // A Vec claiming u64::MAX elements: must fail on the limit, not try to allocate.
        let mut frame = vec![CODEC_VERSION, 0xff];
        frame.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Vec<u64>>(&frame).is_err());
        assert!(decode::<String>(&frame).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<RegistrationEntry>(&bytes);
            let _ = decode::<Bundle>(&bytes);
            let _ = decode::<Vec<SpiffeId>>(&bytes);
            let _ = decode::<(u64, String, Option<Vec<u8>>)>(&bytes);
        }

        #[test]
        fn versioned_random_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut frame = vec![CODEC_VERSION];
            frame.extend_from_slice(&bytes);
            let _ = decode::<RegistrationEntry>(&frame);
            let _ = decode::<Bundle>(&frame);
        }

        #[test]
        fn mutated_entries_never_panic(pos in 0usize..4096, byte in any::<u8>()) {
            let mut frame = encode(&sample_entry()).expect("encode");
            let i = pos % frame.len();
            frame[i] = byte;
            if let Ok(e) = decode::<RegistrationEntry>(&frame) {
                // Whatever decodes is a valid entry.
                prop_assert!(e.validate().is_ok());
            }
        }
    }
}
