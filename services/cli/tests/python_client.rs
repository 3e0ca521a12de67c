//! The Python example, as a user runs it: `examples/python/run.sh ADDR` against a real `dalc up`
//! (SQLite, in-process queue). The script installs grpcio from PyPI into a virtualenv of its own
//! and generates the client from `proto/` at run time, so this also proves that the proto
//! compiles for Python and that a generated client gets the right answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use dalc_testkit::process::DalcProcess;

fn dalc() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_dalc"))
}

/// The repository's root: run.sh is run from there, as its README says.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

#[test]
fn the_python_example_gets_every_answer_right_from_dalc_up() {
    let dir = std::env::temp_dir().join(format!("dalc-python-{}", dalc_testkit::unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = dalc_testkit::fresh_sqlite_database();
    let up = DalcProcess::start_in(
        "dalc up",
        dalc(),
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            database.as_str(),
        ],
        // A free port for the HTTP listener too, so this test can run beside anything on 8080.
        // (A build without that listener ignores the variable.)
        &[("DALC_HTTP_LISTEN", "127.0.0.1:0")],
        true,
        Some(&dir),
    );

    let output = Command::new("bash")
        .arg("examples/python/run.sh")
        .arg(up.authority())
        .current_dir(repo_root())
        // `dalc up` asks for no API key; one from the environment must not change the run.
        .env_remove("DALC_API_KEY")
        .output()
        .expect("bash runs examples/python/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "run.sh exited with {:?}\n----- stdout\n{stdout}\n----- stderr\n{stderr}",
        output.status.code()
    );
    assert!(
        stdout.contains("sync:  1 + 1 = 2 (TASK_STATUS_SUCCEEDED"),
        "the sync result is missing\n----- stdout\n{stdout}\n----- stderr\n{stderr}"
    );
    assert!(
        stdout.contains("all 6 steps passed"),
        "----- stdout\n{stdout}\n----- stderr\n{stderr}"
    );
}
