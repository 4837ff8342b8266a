//! The station's CSR intake: PEM or DER from a factory line or the renewal API, then every
//! check (structure, P-256 key, self-signature, refused extensions). Nothing may panic.
#![no_main]

use fleet_provision::pki::{check_csr, csr_der};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(der) = csr_der(data) {
        let _ = check_csr(&der);
    }
});
