//! The identity bundle parser the device runs at boot on whatever is in its flash slot.
#![no_main]

use fleet_protocol::bundle::{Bundle, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

fuzz_target!(|data: &[u8]| {
    let _ = Bundle::parse(data);
    // Almost every mutation breaks the CRC; parse a copy whose CRC is made right as well, so
    // the field rules behind the check are explored too.
    if data.len() >= HEADER_LEN {
        let mut fixed = data.to_vec();
        let len = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]) as usize;
        let end = HEADER_LEN.saturating_add(len).min(fixed.len());
        let mut digest = CRC32.digest();
        digest.update(&fixed[..16]);
        digest.update(&fixed[HEADER_LEN..end]);
        fixed[16..20].copy_from_slice(&digest.finalize().to_le_bytes());
        let _ = Bundle::parse(&fixed);
    }
});
