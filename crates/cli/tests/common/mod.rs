//! Shared by the binary's end-to-end tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

/// A fresh, empty PostgreSQL database on the cluster `scripts/test` prepares (named
/// `<name>_<pid>`, dropped first if a killed run left it); its URL.
pub async fn fresh_postgres_database(name: &str) -> String {
    let admin_url = std::env::var("USHURU_TEST_POSTGRES_URL").expect(
        "USHURU_TEST_POSTGRES_URL is not set: run ./scripts/test, which starts PostgreSQL and sets it",
    );
    let name = format!("{name}_{}", std::process::id());
    let (admin, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0)
}
