//! Link the forwarder's client library, libpq, from the server edgesync is
//! built for, and record where it lives (rpath).
//!
//! pq-sys declares libpq's API and asks for `-lpq` with a search path of its
//! own (PQ_LIB_DIR or the `pg_config` on PATH: the system's libpq, if any).
//! Cargo passes this package's search path before its dependencies', so the
//! link is against the server's libpq; and at run time the loader looks for
//! libpq.so.5 in the rpath, the server's library directory, whatever
//! pq-sys found.
//!
//! The server loads edgesync at start (shared_preload_libraries); the
//! libpq it brings in is then the one the server's own libpqwalreceiver
//! (streaming replication, native subscriptions) finds already loaded. A
//! libpq older than the server breaks those (PostgreSQL 18 passes options
//! an older libpq rejects), so it must be the server's own.
//!
//! Which server: `EDGESYNC_PG_CONFIG`, else `PGRX_PG_CONFIG_PATH`, else the
//! pg_config `cargo pgrx init` recorded for the enabled `pgNN` feature.

use std::path::PathBuf;
use std::process::Command;

fn pgrx_config_for(feature: &str) -> Option<String> {
    let home = std::env::var("PGRX_HOME")
        .map(PathBuf::from)
        .ok()
        .or_else(|| std::env::var("HOME").ok().map(|h| PathBuf::from(h).join(".pgrx")))?;
    let path = home.join("config.toml");
    println!("cargo:rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == feature).then(|| value.trim().trim_matches('"').to_string())
    })
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=EDGESYNC_PG_CONFIG");
    println!("cargo:rerun-if-env-changed=PGRX_PG_CONFIG_PATH");
    let feature = ["pg13", "pg14", "pg15", "pg16", "pg17", "pg18"]
        .into_iter()
        .find(|f| std::env::var(format!("CARGO_FEATURE_{}", f.to_uppercase())).is_ok());
    let pg_config = std::env::var("EDGESYNC_PG_CONFIG")
        .ok()
        .or_else(|| std::env::var("PGRX_PG_CONFIG_PATH").ok())
        .or_else(|| feature.and_then(pgrx_config_for));
    let libdir = pg_config.as_deref().and_then(|p| {
        let out = Command::new(p).arg("--libdir").output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    match libdir {
        Some(dir) => {
            println!("cargo:rustc-link-search=native={dir}");
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
        None => println!("cargo:warning=edgesync: no pg_config found; linking the system's libpq"),
    }
}
