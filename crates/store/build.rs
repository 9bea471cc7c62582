//! Rebuilds the crate when a migration is added, so the embedded migrator sees it.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
