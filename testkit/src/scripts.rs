//! Running the project's own set-up scripts (`deploy/local/*`) from tests.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// Runs `deploy/local/<name>` with `args`; its stdout, or an error carrying
/// its stderr when it fails.
pub fn run(name: &str, args: &[&str]) -> anyhow::Result<String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/local")
        .join(name);
    let out = Command::new(&script)
        .args(args)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "deploy/local/{name} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
