//! Credentials for test nodes: one HS256 secret every node trusts, a signing key made by
//! `pacer keygen`, and tokens minted by `pacer token` — the real commands an operator uses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::pacer_binary;

/// The HS256 secret of the issuer `pacer` (audience `pacer`) that test nodes trust.
pub const TEST_SECRET: &str = "end-to-end-test-secret-0123456789abcdef";

/// A signing key shared by every node this test process starts.
pub fn signing_key_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let output = Command::new(pacer_binary())
            .arg("keygen")
            .output()
            .expect("pacer keygen runs");
        assert!(
            output.status.success(),
            "pacer keygen failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let dir = std::env::temp_dir().join(format!("pacer-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("key directory");
        let file = dir.join("signing.pem");
        std::fs::write(&file, &output.stdout).expect("key file");
        file
    })
}

/// A token granting `roles`, minted by `pacer token` with the test secret; cached per role set.
pub fn token(roles: &[&str]) -> String {
    static TOKENS: OnceLock<Mutex<HashMap<Vec<String>, String>>> = OnceLock::new();
    let key: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    let mut tokens = TOKENS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    tokens
        .entry(key)
        .or_insert_with(|| {
            let mut command = Command::new(pacer_binary());
            command
                .args(["token", "--sub", "e2e", "--ttl", "2h"])
                .env("PACER_JWT_HS256_SECRET", TEST_SECRET);
            for role in roles {
                command.args(["--role", role]);
            }
            let output = command.output().expect("pacer token runs");
            assert!(
                output.status.success(),
                "pacer token failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout)
                .expect("utf-8 token")
                .trim()
                .to_owned()
        })
        .clone()
}
