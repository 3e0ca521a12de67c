//! The `dalc` client commands of the task API against a real `dalc up` with API keys on:
//! keygen, submit (one, and a file through SubmitBatch), watch, list, cancel and stats, in text
//! and JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use dalc_testkit::process::DalcProcess;

fn dalc() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_dalc"))
}

struct Up {
    process: DalcProcess,
    dir: PathBuf,
    key: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Up {
    /// `dalc` with this gateway's address and key; `stdin` fed to it.
    fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(dalc())
            .args(args)
            .env("DALC_ADDR", self.process.url())
            .env("DALC_API_KEY", &self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    text(output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// `dalc up` with a keys file holding one key made by `dalc keygen`.
fn up_with_a_generated_key() -> Up {
    let dir = std::env::temp_dir().join(format!("dalc-cli-{}", dalc_testkit::unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let keygen = Command::new(dalc())
        .args(["keygen", "--tenant", "ops-team", "--json"])
        .output()
        .unwrap();
    assert!(keygen.status.success());
    let made: serde_json::Value = serde_json::from_slice(&keygen.stdout).unwrap();
    let key = made["key"].as_str().unwrap().to_owned();
    let line = made["line"].as_str().unwrap();
    assert_eq!(line, dalc_gateway::keys_file_line("ops-team", &key));
    std::fs::write(dir.join("keys"), format!("{line}\n")).unwrap();
    let keys = dir.join("keys").display().to_string();
    let args = ["up", "--listen", "127.0.0.1:0", "--api-keys-file", &keys];
    let env = [("DALC_DATABASE_URL", "sqlite://dalc.db?mode=rwc")];
    let process = DalcProcess::start_in("up-cli", dalc(), &args, &env, true, Some(&dir));
    Up { process, dir, key }
}

#[test]
fn the_cli_covers_the_task_api() {
    let up = up_with_a_generated_key();

    // A wrong key is refused.
    let refused = Command::new(dalc())
        .args(["list", "--addr", &up.process.url(), "--api-key", "wrong"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"));

    // A file of expressions (standard input), results in input order.
    let file = "# squares\n1 * 1\n\n2 * 2\n3 * 3\n1 / 0\n";
    let batch = up.run(&["submit", "-f", "-", "--json"], file);
    assert_eq!(batch.status.code(), Some(3), "one task FAILED");
    let answers = json_lines(&batch);
    assert_eq!(answers.len(), 4);
    let results: Vec<&str> = answers[..3]
        .iter()
        .map(|answer| answer["task"]["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["1", "4", "9"]);
    assert_eq!(answers[3]["task"]["status"], "TASK_STATUS_FAILED");

    // Submit async, watch it to the end.
    let submitted = up.run(
        &["submit", "--no-wait", "--json", "--priority", "7", "6 * 7"],
        "",
    );
    assert!(submitted.status.success());
    let id = json_lines(&submitted)[0]["id"].as_str().unwrap().to_owned();
    let watched = up.run(&["watch", &id, "--json"], "");
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let states = json_lines(&watched);
    assert_eq!(states.last().unwrap()["status"], "TASK_STATUS_SUCCEEDED");
    assert_eq!(states.last().unwrap()["result"], "42");
    assert_eq!(states.last().unwrap()["priority"], 7);

    // List: newest first, filtered by status, in text and JSON.
    let listed = up.run(&["list", "--json", "--limit", "2"], "");
    let listed = json_lines(&listed);
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["id"], id.as_str());
    let failed = up.run(&["list", "--status", "failed", "--json"], "");
    let failed = json_lines(&failed);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["expression"], "1 / 0");
    let table = text(&up.run(&["list"], ""));
    assert!(
        table.contains("SUCCEEDED") && table.contains("6 * 7"),
        "{table}"
    );

    // Cancel: refused for a finished task, naming its status.
    let cancel = up.run(&["cancel", &id], "");
    assert_eq!(cancel.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&cancel.stderr).contains("FailedPrecondition"));

    // Stats, once the workers stored their figures.
    let mut stats = serde_json::Value::Null;
    for _ in 0..50 {
        stats = json_lines(&up.run(&["stats", "--json"], ""))[0].clone();
        if stats["totals"]["total"] == "5" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(stats["totals"]["total"], "5", "{stats}");
    assert_eq!(stats["totals"]["failed"], "1", "{stats}");
    assert_eq!(
        stats["tasksByStatus"]["TASK_STATUS_SUCCEEDED"], "4",
        "{stats}"
    );
    let table = text(&up.run(&["stats"], ""));
    assert!(table.contains("worker"), "{table}");
}

/// `dalc watch --timeout` stops then, showing the task as it stands (it hung for as long as the
/// task stayed PENDING), and exits 0 like a `get --wait` that times out.
#[test]
fn a_watch_stops_at_its_timeout() {
    let dir = std::env::temp_dir().join(format!("dalc-watch-{}", dalc_testkit::unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let args = ["up", "--listen", "127.0.0.1:0", "--http-listen", "off"];
    let env = [
        ("DALC_DATABASE_URL", "sqlite://dalc.db?mode=rwc"),
        ("DALC_WORKERS", "0"),
    ];
    let up = DalcProcess::start_in("up-watch", dalc(), &args, &env, true, Some(&dir));
    let submitted = Command::new(dalc())
        .args([
            "submit",
            "--no-wait",
            "--json",
            "1 + 1",
            "--addr",
            &up.url(),
        ])
        .output()
        .unwrap();
    assert!(submitted.status.success());
    let task: serde_json::Value = serde_json::from_slice(&submitted.stdout).unwrap();
    let id = task["id"].as_str().unwrap();

    let mut watch = Command::new(dalc())
        .args(["watch", id, "--timeout", "1s", "--addr", &up.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ended = (0..300).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        watch.try_wait().unwrap().is_some()
    });
    if !ended {
        watch.kill().unwrap();
    }
    let watched = watch.wait_with_output().unwrap();
    assert!(ended, "the watch stopped at its timeout");
    assert_eq!(
        watched.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    assert!(text(&watched).contains("PENDING"), "{}", text(&watched));
    drop(up);
    let _ = std::fs::remove_dir_all(&dir);
}
