//! `ushuru sandbox` as a process: its help's walkthrough works as printed, and options.

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{Running, free_port};

async fn start(args: &[&str]) -> (Running, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // Wrapped at once, so that it is killed and reaped on every path, panics included.
    let running = Running(
        Command::new(env!("CARGO_BIN_EXE_ushuru"))
            .args(["sandbox", "--listen", &listen])
            .args(args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://{listen}");
    for _ in 0..200 {
        if reqwest::get(format!("{url}/_sandbox")).await.is_ok() {
            return (running, url);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the sandbox did not start on {listen}");
}

async fn post(url: &str, headers: &[(&str, &str)], body: &str) -> Value {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap().json().await.unwrap()
}

/// The JSON after `-d '` on the help line that posts to `path`.
fn body_for<'h>(help: &'h str, path: &str) -> &'h str {
    let line = help
        .lines()
        .find(|l| l.contains(path) && l.contains("-d '"))
        .unwrap_or_else(|| panic!("no example for {path}"));
    let start = line.find("-d '").unwrap() + 4;
    let end = line[start..].find('\'').unwrap() + start;
    &line[start..end]
}

#[tokio::test]
async fn the_help_walkthrough_signs_a_sale() {
    let output = Command::new(env!("CARGO_BIN_EXE_ushuru"))
        .args(["sandbox", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for words in [
        "--listen",
        "--state",
        "--mode",
        "--lenient",
        "selectInitOsdcInfo",
        "_sandbox",
        "lost_answer",
    ] {
        assert!(help.contains(words), "help lacks {words}");
    }
    let (_sandbox, url) = start(&[]).await;
    let init = post(
        &format!("{url}/selectInitOsdcInfo"),
        &[],
        body_for(&help, "/selectInitOsdcInfo"),
    )
    .await;
    assert_eq!(init["resultCd"], "000", "{init}");
    let key = init["data"]["info"]["cmcKey"].as_str().unwrap().to_owned();
    let headers = [
        ("tin", "P051234567A"),
        ("bhfId", "00"),
        ("cmcKey", key.as_str()),
    ];
    let item = post(
        &format!("{url}/saveItem"),
        &headers,
        body_for(&help, "/saveItem"),
    )
    .await;
    assert_eq!(item["resultCd"], "000", "{item}");
    let sale = post(
        &format!("{url}/saveTrnsSalesOsdc"),
        &headers,
        body_for(&help, "/saveTrnsSalesOsdc"),
    )
    .await;
    assert_eq!(sale["resultCd"], "000", "{sale}");
    assert_eq!(sale["data"]["curRcptNo"], 1);
    let fault = post(
        &format!("{url}/_sandbox/faults"),
        &[],
        body_for(&help, "/_sandbox/faults"),
    )
    .await;
    assert_eq!(fault["queued"], 1, "{fault}");
}

#[tokio::test]
async fn state_file_and_mode_options() {
    let dir = std::env::temp_dir().join(format!("ushuru-cli-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("cu.sqlite");
    let _ = std::fs::remove_file(&state);
    let state_arg = state.to_str().unwrap();
    {
        let (_sandbox, url) = start(&["--state", state_arg, "--mode", "vscu"]).await;
        let init = post(
            &format!("{url}/initializer/selectInitInfo"),
            &[],
            r#"{"tin":"P051234567A","bhfId":"00","dvcSrlNo":"JAR-1"}"#,
        )
        .await;
        assert_eq!(init["resultCd"], "000");
        let upstream: Value = reqwest::get(format!("{url}/_sandbox/upstream"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(upstream["mode"], "vscu");
    }
    {
        let (_sandbox, url) = start(&["--state", state_arg, "--mode", "vscu"]).await;
        let again = post(
            &format!("{url}/initializer/selectInitInfo"),
            &[],
            r#"{"tin":"P051234567A","bhfId":"00","dvcSrlNo":"JAR-1"}"#,
        )
        .await;
        assert_eq!(
            again["resultCd"], "902",
            "the device was kept across the restart"
        );
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_ushuru"))
        .args(["sandbox", "--mode", "tims"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected oscu or vscu"));
    let bad = Command::new(env!("CARGO_BIN_EXE_ushuru"))
        .args([
            "sandbox",
            "--listen",
            "127.0.0.1:1",
            "--state",
            "/nonexistent/dir/cu.sqlite",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot open --state"));
    let _ = std::fs::remove_dir_all(&dir);
}
