//! The OSS binary's dependency tree holds none of the cloud-only crates,
//! even with every cloud feature switched on in the workspace.

use std::process::Command;

const CLOUD_ONLY: &[&str] = &["samael", "aws-sdk-kms", "async-stripe"];

/// Package names in `cargo tree` of `package` with extra `args`.
fn dependency_names(package: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec!["-p", package];
    all.extend_from_slice(args);
    dependency_tree(&all)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// `cargo tree` output, one package per line, normal and build edges.
fn dependency_tree(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--locked",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "-e",
            "normal,build",
        ])
        .args(args)
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn oss_binary_has_no_cloud_only_crates() {
    let oss = dependency_names("mobius-oss", &[]);
    assert!(
        oss.iter().any(|name| name == "mobius-server"),
        "tree looks wrong: {oss:?}"
    );
    for crate_name in CLOUD_ONLY {
        assert!(
            !oss.iter().any(|name| name == crate_name),
            "mobius-oss depends on {crate_name}"
        );
    }
    // Resolving both editions together with every feature on (as
    // `cargo build --workspace --all-features` would) must not leak cloud
    // crates into the OSS tree through feature unification. cargo tree
    // prints one block per root, separated by a blank line.
    let both = dependency_tree(&[
        "-p",
        "mobius-oss",
        "-p",
        "mobius-cloud",
        "--all-features",
        "--no-dedupe",
    ]);
    let oss_with_cloud: Vec<String> = both
        .split("\n\n")
        .find(|block| block.starts_with("mobius-oss "))
        .expect("a mobius-oss block")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(
        oss_with_cloud.len() > 10,
        "tree looks wrong: {oss_with_cloud:?}"
    );
    for crate_name in CLOUD_ONLY {
        assert!(
            !oss_with_cloud.iter().any(|name| name == crate_name),
            "mobius-oss depends on {crate_name}"
        );
    }
}

/// OIDC single sign-on is in both editions: `openidconnect` is in each
/// binary's tree (SAML, cloud-only, is in `CLOUD_ONLY` above).
#[test]
fn both_editions_have_oidc() {
    for package in ["mobius-oss", "mobius-cloud"] {
        let tree = dependency_names(package, &[]);
        assert!(
            tree.iter().any(|name| name == "openidconnect"),
            "{package} lacks openidconnect"
        );
    }
}

/// The check above means something only if the cloud edition really pulls
/// those crates in when its features are on.
#[test]
fn cloud_features_do_bring_the_cloud_only_crates() {
    let cloud = dependency_names("mobius-cloud", &["--all-features"]);
    for crate_name in CLOUD_ONLY {
        assert!(
            cloud.iter().any(|name| name == crate_name),
            "mobius-cloud lacks {crate_name}"
        );
    }
}
