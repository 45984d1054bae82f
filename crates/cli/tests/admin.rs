//! `ushuru migrate` and `ushuru admin` as processes, on SQLite and PostgreSQL: the schema
//! brought up to date (then found up to date), operator and branch keys issued once,
//! listed without the key and revoked, the audit log read back, and the refusals.

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use serde_json::Value;

mod common;

fn ushuru(database: &[String], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ushuru"))
        .args(&args[..1])
        .args(database)
        .args(&args[1..])
        .env_remove("USHURU_DATABASE_URL")
        .env_remove("USHURU_DATA_DIR")
        .output()
        .unwrap()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn migrate_and_administer(database: Vec<String>) {
    // Migrate: everything, then nothing.
    let first = ok(&ushuru(&database, &["migrate"]));
    assert!(first.contains("applied 0001_foundation"), "{first}");
    assert!(
        first.contains("applied 0011_operators_and_audit"),
        "{first}"
    );
    assert_eq!(
        ok(&ushuru(&database, &["migrate"])).trim(),
        "the database is up to date"
    );

    // A tenant and branch to administer, as serve would have made them.
    let store = match database.as_slice() {
        [flag, url] if flag == "--database-url" => ushuru_store::Store::connect(url).await,
        [flag, dir] => {
            assert_eq!(flag, "--data-dir");
            ushuru_store::Store::connect(&format!("{dir}/ushuru.sqlite")).await
        }
        _ => unreachable!(),
    }
    .unwrap();
    // A tenant and a branch, made by `ushuru admin`; a second time refused.
    ok(&ushuru(
        &database,
        &[
            "admin",
            "tenant-create",
            "--tin",
            "P051234567A",
            "--name",
            "Traders",
        ],
    ));
    let added: Value = serde_json::from_str(&ok(&ushuru(
        &database,
        &[
            "admin",
            "branch-add",
            "--tin",
            "P051234567A",
            "--bhf-id",
            "00",
        ],
    )))
    .unwrap();
    let device_id = added["deviceId"].to_string();
    for (args, reason) in [
        (
            vec![
                "admin",
                "tenant-create",
                "--tin",
                "P051234567A",
                "--name",
                "x",
            ],
            "exists already",
        ),
        (
            vec![
                "admin",
                "branch-add",
                "--tin",
                "P051234567A",
                "--bhf-id",
                "00",
            ],
            "already",
        ),
        (
            vec![
                "admin",
                "branch-add",
                "--tin",
                "P999999999Z",
                "--bhf-id",
                "01",
            ],
            "no tenant",
        ),
        (
            vec![
                "admin",
                "branch-add",
                "--tin",
                "P051234567A",
                "--bhf-id",
                "7",
            ],
            "not a branch id",
        ),
    ] {
        let output = ushuru(&database, &args);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(reason),
            "{args:?}"
        );
    }
    let tenant = store.tenant_by_tin("P051234567A").await.unwrap().unwrap();
    let branch = store.branch_by_id(tenant.id, "00").await.unwrap().unwrap();
    assert_eq!(added["deviceId"].as_i64(), Some(branch.id.0));

    // The device, initialised on a control unit over HTTP, its cmcKey sealed at once.
    let unit_dir = std::env::temp_dir().join(format!(
        "ushuru-admin-unit-{}-{}",
        std::process::id(),
        device_id
    ));
    let _ = std::fs::remove_dir_all(&unit_dir);
    std::fs::create_dir_all(&unit_dir).unwrap();
    let unit_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut unit = Command::new(env!("CARGO_BIN_EXE_ushuru"))
        .args(["sandbox", "--listen", &format!("127.0.0.1:{unit_port}")])
        .args(["--state", unit_dir.join("unit.sqlite").to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let unit_url = format!("http://127.0.0.1:{unit_port}");
    for _ in 0..200 {
        if reqwest::get(format!("{unit_url}/_sandbox")).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let master = data_encoding::BASE64.encode(&[11u8; 32]);
    let init = Command::new(env!("CARGO_BIN_EXE_ushuru"))
        .args(["admin"])
        .args(&database)
        .args([
            "device-init",
            "--device-id",
            &device_id,
            "--control-unit",
            &unit_url,
        ])
        .args(["--serial", "POS-ADMIN-1"])
        .env("USHURU_MASTER_KEY", &master)
        .output()
        .unwrap();
    let _ = unit.kill();
    let _ = unit.wait();
    let initialised: Value = serde_json::from_str(&ok(&init)).unwrap();
    assert!(initialised["sdcId"].as_str().unwrap().starts_with("KRACU"));
    let device = store.device(branch.scope()).await.unwrap().unwrap();
    let vault = ushuru_vault::Vault::new(std::sync::Arc::new(
        ushuru_vault::Keyring::from_text(&master).unwrap(),
    ));
    let binding = ushuru_vault::Binding {
        tenant: branch.tenant.0,
        branch: branch.id.0,
    };
    assert_eq!(
        vault.open_cmc_key(binding, &device.cmc_key).unwrap().len(),
        32
    );
    let _ = std::fs::remove_dir_all(&unit_dir);

    let operator = ok(&ushuru(
        &database,
        &["admin", "operator-key", "issue", "--name", "ops"],
    ));
    let operator = operator.trim();
    assert!(operator.starts_with("ushop_"), "{operator}");
    assert!(
        store
            .authenticate_operator(operator, chrono::Utc::now())
            .await
            .unwrap()
            .is_some()
    );

    let tenants = lines(&ok(&ushuru(&database, &["admin", "tenants"])));
    assert_eq!(tenants.len(), 1);
    assert_eq!(tenants[0]["deviceId"].to_string(), device_id);

    let key = ok(&ushuru(
        &database,
        &[
            "admin",
            "key",
            "issue",
            "--device-id",
            &device_id,
            "--name",
            "till",
        ],
    ));
    let key = key.trim();
    let issued = store
        .authenticate(key, chrono::Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(issued.scope.branch, branch.id);
    let listed = ok(&ushuru(
        &database,
        &["admin", "key", "list", "--device-id", &device_id],
    ));
    assert!(!listed.contains(key), "a listing never shows the key");
    assert_eq!(lines(&listed)[0]["prefix"].as_str(), Some(&key[..12]));
    ok(&ushuru(
        &database,
        &["admin", "key", "revoke", "--key-id", &issued.id.to_string()],
    ));
    assert!(
        store
            .authenticate(key, chrono::Utc::now())
            .await
            .unwrap()
            .is_none()
    );

    // Refusals: exit status 2 and a reason, nothing written.
    for (args, reason) in [
        (
            vec!["admin", "key", "revoke", "--key-id", &issued.id.to_string()],
            "no live API key",
        ),
        (
            vec![
                "admin",
                "key",
                "issue",
                "--device-id",
                "999999",
                "--name",
                "x",
            ],
            "no branch with id 999999",
        ),
        (
            vec!["admin", "operator-key", "issue", "--name", " "],
            "--name must be",
        ),
    ] {
        let output = ushuru(&database, &args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }

    // OAuth client credentials: issued (the secret once), then revoked.
    let issued: Value = serde_json::from_str(&ok(&ushuru(
        &database,
        &[
            "admin",
            "oauth-client",
            "issue",
            "--device-id",
            &device_id,
            "--name",
            "erp",
        ],
    )))
    .unwrap();
    let (client_id, secret) = (
        issued["clientId"].as_str().unwrap(),
        issued["clientSecret"].as_str().unwrap(),
    );
    assert!(
        store
            .authenticate_oauth_client(client_id, secret)
            .await
            .unwrap()
            .is_some()
    );
    ok(&ushuru(
        &database,
        &[
            "admin",
            "oauth-client",
            "revoke",
            "--id",
            &issued["id"].to_string(),
        ],
    ));
    assert!(
        store
            .authenticate_oauth_client(client_id, secret)
            .await
            .unwrap()
            .is_none()
    );

    // Operator keys: listed without the key, then revoked.
    let operators = ok(&ushuru(&database, &["admin", "operator-key", "list"]));
    assert!(!operators.contains(operator));
    let operator_id = lines(&operators)[0]["keyId"].to_string();
    ok(&ushuru(
        &database,
        &["admin", "operator-key", "revoke", "--key-id", &operator_id],
    ));
    assert!(
        store
            .authenticate_operator(operator, chrono::Utc::now())
            .await
            .unwrap()
            .is_none()
    );

    let audit = ok(&ushuru(&database, &["admin", "audit"]));
    assert!(!audit.contains(key) && !audit.contains(operator) && !audit.contains(secret));
    let actions: Vec<String> = lines(&audit)
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            "cli tenant.created",
            "cli branch.created",
            "cli device.initialised",
            "cli operator_key.issued",
            "cli api_key.issued",
            "cli api_key.revoked",
            "cli oauth_client.issued",
            "cli oauth_client.revoked",
            "cli operator_key.revoked"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite() {
    let dir = std::env::temp_dir().join(format!("ushuru-admin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Administering a directory with no database says so, instead of creating one.
    let output = ushuru(
        &["--data-dir".into(), dir.to_str().unwrap().into()],
        &["admin", "tenants"],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no database at"));
    migrate_and_administer(vec!["--data-dir".into(), dir.to_str().unwrap().into()]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    let url = common::fresh_postgres_database("ushuru_admin_cli").await;
    migrate_and_administer(vec!["--database-url".into(), url]).await;
}
