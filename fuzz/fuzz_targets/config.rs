//! The `m2m` binary's configuration: arbitrary text loaded as the configuration file, with
//! arbitrary `M2M_*` environment variables, exactly as `m2m node` loads it
//! ([`m2m::config::load_text`]). Nothing may panic. A configuration that loads must also turn into
//! every library's settings (broker, mesh, rules, history, HTTP, uplinks) without panicking, and
//! survive being written back as TOML and loaded again unchanged.
//!
//! The input is the file, a NUL byte, then environment variables, one `NAME=value` a line, each
//! name prefixed with `M2M_`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use m2m::config::{load_text, FileConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(data) = std::str::from_utf8(data) else { return };
    let (file, env) = data.split_once('\0').unwrap_or((data, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (format!("M2M_{name}"), value.to_owned()))
        .collect();
    let Ok(mut config) = load_text(file, env, &[]) else { return };
    // The key file is read from disk: never let the fuzzer name one (it could be /dev/zero).
    if !config.jwt.public_key_file.is_empty() {
        config.jwt.public_key_file = "/nonexistent/m2m-fuzz/key.pem".to_owned();
    }
    derive_everything(&config);

    let written = toml::to_string(&config).expect("a loaded configuration serializes");
    let again = load_text(&written, Vec::new(), &[]).expect("a written configuration loads");
    assert_eq!(again, config, "written as\n{written}");
});

fn derive_everything(config: &FileConfig) {
    let _ = config.broker();
    let _ = config.mesh.config();
    let _ = config.rules.config();
    let _ = config.history.config();
    let _ = config.http.config();
    for uplink in &config.uplinks {
        let _ = uplink.uplink();
    }
}
