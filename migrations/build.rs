//! Fingerprints the migration sources so the test harness can reuse a
//! migrated template database until a migration changes.
use std::hash::{DefaultHasher, Hash, Hasher};
use std::{fs, path::Path};

fn main() {
    let mut files: Vec<_> = fs::read_dir("src")
        .expect("migrations/src is readable")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in &files {
        file.file_name().hash(&mut hasher);
        fs::read(file)
            .expect("migration source is readable")
            .hash(&mut hasher);
    }
    println!("cargo:rerun-if-changed=src");
    for file in &files {
        println!("cargo:rerun-if-changed={}", Path::new(file).display());
    }
    println!(
        "cargo:rustc-env=MOBIUS_MIGRATIONS_FINGERPRINT={:016x}",
        hasher.finish()
    );
}
