//! `dalc keygen`: a new random API key for a tenant, and the line of the API keys file that
//! lets it in (`TENANT SHA256-HEX`): gateways keep only hashes, so a leaked keys file leaks no
//! key.

use anyhow::{Context, Result};
use dalc_gateway::keys_file_line;

use crate::args::KeygenArgs;

/// Random bytes in a key: 256 bits, beyond guessing.
const KEY_BYTES: usize = 32;

pub fn keygen(args: KeygenArgs) -> Result<u8> {
    let mut bytes = [0u8; KEY_BYTES];
    getrandom::fill(&mut bytes).context("the system's random source failed")?;
    let key = hex(&bytes);
    let line = keys_file_line(&args.tenant, &key);
    if args.json {
        let object = serde_json::json!({ "tenant": args.tenant, "key": key, "line": line });
        say!("{object}");
    } else {
        say!("key:  {key}");
        say!("line: {line}");
    }
    Ok(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_holds_the_sha256_of_the_key_text() {
        // sha256("abc"), the FIPS 180-2 example.
        assert_eq!(
            keys_file_line("acme", "abc"),
            "acme ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn keys_are_64_hex_digits() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(hex(&[7; KEY_BYTES]).len(), 64);
    }
}
