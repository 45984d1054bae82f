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

/// A child process (`ushuru serve`, `ushuru sandbox`) killed and reaped when dropped, so a
/// failing test leaves no server behind.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stops the process with SIGTERM and checks it exits 0 within 20 s (a graceful stop).
pub fn terminate(mut running: Running) {
    let pid = running.0.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            assert!(status.success(), "a graceful stop exits 0: {status}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ushuru serve did not stop on SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
