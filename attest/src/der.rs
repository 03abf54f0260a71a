//! A small DER writer: just what X.509 certificate encoding needs (ITU-T X.690 §10).
//!
//! Constructed values are written in place: [`DerWriter::nested`] writes the tag and a one-byte
//! length placeholder, runs the closure that writes the contents, then fixes the length (moving
//! the contents when the long form needs more bytes). Time values use UTCTime for 1950–2049 and
//! GeneralizedTime otherwise (RFC 5280 §4.1.2.5), always in whole seconds with `Z`.

use crate::Error;

/// Universal tags used here.
pub(crate) const TAG_BOOLEAN: u8 = 0x01;
pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_UTF8_STRING: u8 = 0x0c;
pub(crate) const TAG_PRINTABLE_STRING: u8 = 0x13;
pub(crate) const TAG_UTC_TIME: u8 = 0x17;
pub(crate) const TAG_GENERALIZED_TIME: u8 = 0x18;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_SET: u8 = 0x31;

/// Latest second GeneralizedTime can express: 9999-12-31T23:59:59Z.
pub(crate) const TIME_SECS_MAX: u64 = 253_402_300_799;

/// An append-only DER buffer.
#[derive(Debug, Default)]
pub(crate) struct DerWriter {
    pub(crate) buf: Vec<u8>,
}

/// Appends a definite-form length.
pub(crate) fn push_len(buf: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        buf.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    buf.push(0x80 | (bytes.len() - skip) as u8);
    buf.extend_from_slice(&bytes[skip..]);
}

impl DerWriter {
    pub(crate) fn with_capacity(bytes: usize) -> DerWriter {
        DerWriter {
            buf: Vec::with_capacity(bytes),
        }
    }

    /// Appends already-encoded DER.
    pub(crate) fn raw(&mut self, der: &[u8]) {
        self.buf.extend_from_slice(der);
    }

    /// Appends one primitive value.
    pub(crate) fn tlv(&mut self, tag: u8, content: &[u8]) {
        self.buf.push(tag);
        push_len(&mut self.buf, content.len());
        self.buf.extend_from_slice(content);
    }

    /// Appends a constructed value whose contents `f` writes.
    pub(crate) fn nested(&mut self, tag: u8, f: impl FnOnce(&mut DerWriter)) {
        let start = self.buf.len();
        self.buf.push(tag);
        self.buf.push(0);
        let body = self.buf.len();
        f(self);
        let len = self.buf.len() - body;
        if len < 0x80 {
            self.buf[start + 1] = len as u8;
        } else {
            let mut header = Vec::with_capacity(5);
            push_len(&mut header, len);
            self.buf[start + 1] = header[0];
            self.buf.splice(body..body, header[1..].iter().copied());
        }
    }

    /// Appends an INTEGER holding the unsigned big-endian number `magnitude`.
    pub(crate) fn unsigned_integer(&mut self, magnitude: &[u8]) {
        let skip = magnitude
            .iter()
            .take_while(|b| **b == 0)
            .count()
            .min(magnitude.len().saturating_sub(1));
        let digits = &magnitude[skip..];
        if digits.is_empty() {
            self.tlv(TAG_INTEGER, &[0]);
            return;
        }
        let pad = digits[0] & 0x80 != 0;
        self.buf.push(TAG_INTEGER);
        push_len(&mut self.buf, digits.len() + usize::from(pad));
        if pad {
            self.buf.push(0);
        }
        self.buf.extend_from_slice(digits);
    }

    /// Appends an OBJECT IDENTIFIER from its encoded content octets.
    pub(crate) fn oid(&mut self, content: &[u8]) {
        self.tlv(TAG_OID, content);
    }

    /// Appends a BIT STRING with no unused bits.
    pub(crate) fn bit_string(&mut self, bits: &[u8]) {
        self.buf.push(TAG_BIT_STRING);
        push_len(&mut self.buf, bits.len() + 1);
        self.buf.push(0);
        self.buf.extend_from_slice(bits);
    }

    /// Appends an X.509 `Time` for `secs` since the epoch.
    pub(crate) fn time(&mut self, secs: u64) -> Result<(), Error> {
        if secs > TIME_SECS_MAX {
            return Err(Error::InvalidRequest("time is beyond year 9999"));
        }
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let rem = secs % 86_400;
        let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
        let mut text = [0u8; 15];
        let mut n = 0;
        let mut two = |v: u64, text: &mut [u8; 15]| {
            text[n] = b'0' + (v / 10) as u8;
            text[n + 1] = b'0' + (v % 10) as u8;
            n += 2;
        };
        let tag = if (1950..2050).contains(&year) {
            two(year as u64 % 100, &mut text);
            TAG_UTC_TIME
        } else {
            two(year as u64 / 100, &mut text);
            two(year as u64 % 100, &mut text);
            TAG_GENERALIZED_TIME
        };
        for v in [u64::from(month), u64::from(day), hour, minute, second] {
            two(v, &mut text);
        }
        text[n] = b'Z';
        self.tlv(tag, &text[..=n]);
        Ok(())
    }
}

/// Proleptic Gregorian (year, month, day) of the day `days` after 1970-01-01.
///
/// Counts in 400-year eras that start on March 1st, so that the leap day is the last day of the
/// shifted year and month lengths follow a simple 153-day pattern per five months.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Days from 0000-03-01 to 1970-01-01.
    const SHIFT: i64 = 719_468;
    const ERA_DAYS: i64 = 146_097;
    let shifted = days + SHIFT;
    let era = shifted.div_euclid(ERA_DAYS);
    let day_of_era = shifted.rem_euclid(ERA_DAYS);
    // Years into the era: remove the leap days that a 365-day count over-runs.
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / (ERA_DAYS - 1)) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Month counted from March (0) to February (11).
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time_text(secs: u64) -> String {
        let mut w = DerWriter::default();
        w.time(secs).expect("time");
        String::from_utf8(w.buf[2..].to_vec()).expect("ascii")
    }

    #[test]
    fn lengths_use_the_shortest_definite_form() {
        for (len, want) in [
            (0usize, vec![0u8]),
            (0x7f, vec![0x7f]),
            (0x80, vec![0x81, 0x80]),
            (0xff, vec![0x81, 0xff]),
            (0x100, vec![0x82, 0x01, 0x00]),
            (0x1_0000, vec![0x83, 0x01, 0x00, 0x00]),
        ] {
            let mut buf = Vec::new();
            push_len(&mut buf, len);
            assert_eq!(buf, want, "{len}");
        }
    }

    #[test]
    fn nested_fixes_long_lengths() {
        for body in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let mut w = DerWriter::default();
            w.raw(&[0xaa]);
            w.nested(TAG_SEQUENCE, |w| w.raw(&vec![7u8; body]));
            w.raw(&[0xbb]);
            let mut want = vec![0xaa, TAG_SEQUENCE];
            push_len(&mut want, body);
            want.extend(std::iter::repeat_n(7u8, body));
            want.push(0xbb);
            assert_eq!(w.buf, want, "{body}");
        }
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        let enc = |m: &[u8]| {
            let mut w = DerWriter::default();
            w.unsigned_integer(m);
            w.buf
        };
        assert_eq!(enc(&[]), [2, 1, 0]);
        assert_eq!(enc(&[0, 0]), [2, 1, 0]);
        assert_eq!(enc(&[0, 0x7f]), [2, 1, 0x7f]);
        assert_eq!(enc(&[0x80]), [2, 2, 0, 0x80]);
        assert_eq!(enc(&[0, 0, 0x01, 0x00]), [2, 2, 1, 0]);
    }

    #[test]
    fn times_switch_to_generalized_time_in_2050() {
        assert_eq!(time_text(0), "700101000000Z");
        assert_eq!(time_text(951_782_400), "000229000000Z"); // 2000-02-29, a leap day
        assert_eq!(time_text(2_524_607_999), "491231235959Z");
        assert_eq!(time_text(2_524_608_000), "20500101000000Z");
        assert_eq!(time_text(TIME_SECS_MAX), "99991231235959Z");
        let mut w = DerWriter::default();
        assert!(w.time(TIME_SECS_MAX + 1).is_err());
    }

    #[test]
    fn civil_dates_match_the_time_crate() {
        let mut day = -800_000i64;
        while day < 2_900_000 {
            let date = time::OffsetDateTime::from_unix_timestamp(day * 86_400)
                .expect("in range")
                .date();
            assert_eq!(
                civil_from_days(day),
                (
                    i64::from(date.year()),
                    u32::from(u8::from(date.month())),
                    u32::from(date.day())
                ),
                "day {day}"
            );
            day += 37;
        }
    }
}
