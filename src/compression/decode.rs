//! Decoding a request body within a size limit and an expansion-ratio limit.

use std::num::NonZeroU32;

use bytes::{Bytes, BytesMut};

use super::coding::{Coding, Decoder, SCRATCH};

/// Decoded bytes below which the expansion ratio is not checked: 64 KiB. Small
/// bodies of repetitive JSON legitimately expand far beyond any sane ratio, and
/// cannot hurt anyone.
pub const RATIO_GRACE: u64 = 64 * 1024;

/// Why a body was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The decoded body would exceed the size limit.
    TooLarge { limit: u64 },
    /// The compressed body alone exceeds the size limit.
    EncodedTooLarge { limit: u64 },
    /// The body expands more than the ratio allows.
    Ratio { ratio: u32 },
    /// The data is not valid for the coding, or ends early.
    Corrupt(String),
}

/// Decodes one body incrementally. Never holds more than `limit + 1` decoded
/// bytes: the decoder is only ever given room up to one byte past the limit.
#[derive(Debug)]
pub(crate) struct BoundedDecoder {
    coding: Coding,
    decoder: Decoder,
    scratch: Box<[u8]>,
    out: BytesMut,
    limit: u64,
    ratio: u32,
    /// Compressed bytes given to [`feed`](Self::feed).
    encoded: u64,
    /// Compressed bytes the decoder has consumed: the ratio is measured on these,
    /// so a bomb that arrives in one large frame is stopped as early as one that
    /// arrives in small ones.
    consumed: u64,
    decoded: u64,
    /// The last member ended and no input followed it yet.
    member_ended: bool,
}

impl BoundedDecoder {
    /// A decoder for `coding`, or `None` when the coding's feature is off.
    pub(crate) fn new(coding: Coding, limit: u64, ratio: NonZeroU32) -> Option<Self> {
        Some(BoundedDecoder {
            coding,
            decoder: Decoder::new(coding)?,
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            out: BytesMut::new(),
            limit,
            ratio: ratio.get(),
            encoded: 0,
            consumed: 0,
            decoded: 0,
            member_ended: false,
        })
    }

    /// Decoded bytes so far.
    pub(crate) fn decoded(&self) -> u64 {
        self.decoded
    }

    /// Compressed bytes given so far.
    pub(crate) fn encoded(&self) -> u64 {
        self.encoded
    }

    /// Decodes the next chunk of the compressed body.
    pub(crate) fn feed(&mut self, mut input: &[u8]) -> Result<(), Refusal> {
        self.encoded += input.len() as u64;
        if self.encoded > self.limit {
            return Err(Refusal::EncodedTooLarge { limit: self.limit });
        }

        while !input.is_empty() {
            if self.member_ended {
                // Another gzip member or zstd frame follows.
                self.decoder.reinit().map_err(corrupt)?;
                self.member_ended = false;
            }
            let room = self.room();
            let (read, written, ended) = self
                .decoder
                .decode(input, &mut self.scratch[..room])
                .map_err(corrupt)?;
            self.consumed += read as u64;
            self.accept(written)?;
            input = &input[read..];
            self.member_ended = ended;
            if read == 0 && written == 0 && !ended {
                return Err(Refusal::Corrupt(format!(
                    "the {} decoder made no progress",
                    self.coding
                )));
            }
        }
        Ok(())
    }

    /// Ends the body: drains the decoder and checks the stream was complete.
    pub(crate) fn finish(mut self) -> Result<Bytes, Refusal> {
        if self.encoded == 0 {
            // An empty body declared compressed: nothing to decode.
            return Ok(Bytes::new());
        }
        loop {
            let room = self.room();
            let (written, done) = self
                .decoder
                .flush(&mut self.scratch[..room])
                .map_err(corrupt)?;
            self.accept(written)?;
            if done || written == 0 {
                break;
            }
        }
        if !self.member_ended {
            // The decoder may still end the member with no further input.
            let room = self.room();
            let (_, written, ended) = self
                .decoder
                .decode(&[], &mut self.scratch[..room])
                .map_err(corrupt)?;
            self.accept(written)?;
            if !ended {
                return Err(Refusal::Corrupt(format!(
                    "the body ends before its {} stream does",
                    self.coding
                )));
            }
        }
        Ok(self.out.freeze())
    }

    /// Output room for the next call: at most one byte past the limit.
    fn room(&self) -> usize {
        let left = (self.limit + 1).saturating_sub(self.decoded);
        usize::try_from(left).map_or(SCRATCH, |left| left.min(SCRATCH))
    }

    fn accept(&mut self, written: usize) -> Result<(), Refusal> {
        self.decoded += written as u64;
        if self.decoded > self.limit {
            return Err(Refusal::TooLarge { limit: self.limit });
        }
        if self.decoded > RATIO_GRACE
            && self.decoded > u64::from(self.ratio).saturating_mul(self.consumed)
        {
            return Err(Refusal::Ratio { ratio: self.ratio });
        }
        self.out.extend_from_slice(&self.scratch[..written]);
        Ok(())
    }
}

fn corrupt(error: std::io::Error) -> Refusal {
    Refusal::Corrupt(error.to_string())
}

#[cfg(all(test, any(feature = "compression-gzip", feature = "compression-zstd")))]
mod tests {
    use super::*;

    fn ratio(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[cfg(feature = "compression-gzip")]
    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[cfg(feature = "compression-gzip")]
    #[test]
    fn a_gzip_zero_bomb_stops_one_byte_past_the_limit() {
        let bomb = gzip(&vec![0; 10 << 20]);
        let mut decoder = BoundedDecoder::new(Coding::Gzip, 1 << 20, ratio(u32::MAX)).unwrap();
        assert_eq!(
            decoder.feed(&bomb),
            Err(Refusal::TooLarge { limit: 1 << 20 })
        );
        assert_eq!(decoder.decoded(), (1 << 20) + 1);
        assert!(decoder.out.len() <= 1 << 20);
    }

    #[cfg(feature = "compression-zstd")]
    #[test]
    fn a_zstd_zero_bomb_stops_one_byte_past_the_limit() {
        let bomb = zstd::bulk::compress(&vec![0; 10 << 20], 19).unwrap();
        let mut decoder = BoundedDecoder::new(Coding::Zstd, 1 << 20, ratio(u32::MAX)).unwrap();
        assert_eq!(
            decoder.feed(&bomb),
            Err(Refusal::TooLarge { limit: 1 << 20 })
        );
        assert_eq!(decoder.decoded(), (1 << 20) + 1);
        assert!(decoder.out.len() <= 1 << 20);
    }

    #[cfg(feature = "compression-zstd")]
    #[test]
    fn zstd_frames_asking_for_a_window_over_8_mib_are_corrupt() {
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(24).unwrap();
        encoder.long_distance_matching(true).unwrap();
        std::io::Write::write_all(&mut encoder, &vec![1u8; 20 << 20]).unwrap();
        let frame = encoder.finish().unwrap();
        let mut decoder = BoundedDecoder::new(Coding::Zstd, 64 << 20, ratio(u32::MAX)).unwrap();
        assert!(matches!(decoder.feed(&frame), Err(Refusal::Corrupt(_))));
    }

    #[cfg(feature = "compression-gzip")]
    #[test]
    fn expansion_beyond_the_ratio_is_refused_after_the_grace() {
        let bomb = gzip(&vec![0; 10 << 20]);
        let mut decoder = BoundedDecoder::new(Coding::Gzip, 64 << 20, ratio(100)).unwrap();
        let mut refusal = Ok(());
        for chunk in bomb.chunks(16) {
            refusal = decoder.feed(chunk);
            if refusal.is_err() {
                break;
            }
        }
        assert_eq!(refusal, Err(Refusal::Ratio { ratio: 100 }));
        assert!(decoder.decoded() <= RATIO_GRACE + SCRATCH as u64);
        assert!(decoder.encoded() < bomb.len() as u64 / 4);
    }

    #[test]
    fn a_bomb_in_one_frame_is_stopped_by_the_ratio_as_early_as_in_small_frames() {
        let zeros = vec![0; 10 << 20];
        #[cfg(feature = "compression-gzip")]
        let gzip_bomb = (Coding::Gzip, gzip(&zeros));
        #[cfg(feature = "compression-zstd")]
        let zstd_bomb = (Coding::Zstd, zstd::bulk::compress(&zeros, 19).unwrap());
        for (coding, bomb) in [
            #[cfg(feature = "compression-gzip")]
            gzip_bomb,
            #[cfg(feature = "compression-zstd")]
            zstd_bomb,
        ] {
            let mut decoder = BoundedDecoder::new(coding, 64 << 20, ratio(100)).unwrap();
            assert_eq!(decoder.feed(&bomb), Err(Refusal::Ratio { ratio: 100 }));
            // The whole bomb was handed over at once, yet decoding stopped at the
            // first scratch buffer past the grace: the ratio counts the input the
            // decoder consumed, not the input it was offered.
            assert_eq!(decoder.encoded(), bomb.len() as u64, "{coding}");
            assert!(decoder.decoded() > RATIO_GRACE, "{coding}");
            assert!(
                decoder.decoded() <= RATIO_GRACE + SCRATCH as u64,
                "{coding}: {}",
                decoder.decoded()
            );
            assert!(decoder.out.len() as u64 <= RATIO_GRACE, "{coding}");
        }
    }

    #[cfg(feature = "compression-gzip")]
    #[test]
    fn concatenated_gzip_members_decode_in_full() {
        let mut body = gzip(b"hello, ");
        body.extend(gzip(b"world"));
        let mut decoder = BoundedDecoder::new(Coding::Gzip, 1024, ratio(100)).unwrap();
        decoder.feed(&body).unwrap();
        assert_eq!(decoder.finish().unwrap(), "hello, world");
    }

    #[cfg(feature = "compression-gzip")]
    #[test]
    fn a_truncated_stream_is_corrupt() {
        let body = gzip(&[7; 4096]);
        let mut decoder = BoundedDecoder::new(Coding::Gzip, 1 << 20, ratio(100)).unwrap();
        decoder.feed(&body[..body.len() - 6]).unwrap();
        assert!(matches!(decoder.finish(), Err(Refusal::Corrupt(_))));
    }
}
