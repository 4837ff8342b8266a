//! The gateway's TOML configuration loader: any text gets a config or an error naming the key.
#![no_main]

use fleet_gateway::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_toml(text, std::path::Path::new("/nonexistent"));
    }
});
