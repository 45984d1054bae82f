//! The optional state file: SQLite, one row per record, written through as records change,
//! so that a sandbox restarted on the same file carries on where it stopped.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use crate::sales::{SaleReadError, Sales};
use crate::state::{Changes, Kind, State};

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("state file: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state file holds a record that does not read back ({kind} {key}): {source}")]
    Corrupt {
        kind: String,
        key: String,
        source: serde_json::Error,
    },
    #[error("cannot encode a record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot start the checkpoint thread: {0}")]
    Thread(String),
    #[error(transparent)]
    Read(#[from] SaleReadError),
}

pub struct StateFile {
    path: PathBuf,
    connection: Connection,
    checkpointer: Option<Checkpointer>,
}

/// Checkpoints the WAL from its own connection and thread. A checkpoint is where SQLite
/// waits for the disk (fsync); left to the writer, it lands inside a sale every thousand
/// pages and stalls every caller behind it.
struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for StateFile {
    fn drop(&mut self) {
        if let Some(mut checkpointer) = self.checkpointer.take() {
            let _ = checkpointer.stop.send(());
            if let Some(thread) = checkpointer.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl StateFile {
    /// Opens (or creates) the file. WAL with `synchronous=NORMAL`: a commit survives a
    /// crash of the sandbox; a power cut may lose the last moments, which a sandbox can afford.
    pub fn open(path: &Path) -> Result<Self, PersistError> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.pragma_update(None, "wal_autocheckpoint", 0)?;
        // Another process holding the file answers a call within a second (as 999), rather
        // than stalling every caller for SQLite's default five.
        connection.busy_timeout(std::time::Duration::from_secs(1))?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS records (
                kind  TEXT NOT NULL,
                key   TEXT NOT NULL,
                value TEXT NOT NULL,
                CONSTRAINT records_pk PRIMARY KEY (kind, key)
            );",
        )?;
        let checkpoints = Connection::open(path)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sandbox-checkpoint".into())
            .spawn(move || {
                // Until the file is closed: a passive checkpoint never blocks the writer.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(std::time::Duration::from_millis(200))
                {
                    if let Err(e) =
                        checkpoints.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "sandbox state checkpoint failed");
                    }
                }
                let _ = checkpoints.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            })
            .map_err(|e| PersistError::Thread(e.to_string()))?;
        Ok(StateFile {
            path: path.to_owned(),
            connection,
            checkpointer: Some(Checkpointer {
                stop,
                thread: Some(thread),
            }),
        })
    }

    /// The state the file holds. Its sales stay in the file (only an index of them is
    /// loaded, see [`crate::sales`]) and are read back through a connection of their own.
    pub fn load(&self) -> Result<State, PersistError> {
        let reader = Connection::open(&self.path)?;
        reader.busy_timeout(std::time::Duration::from_secs(1))?;
        let mut state = State {
            sales: Sales::in_file(reader),
            ..State::default()
        };
        let mut statement = self
            .connection
            .prepare("SELECT kind, key, value FROM records")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (kind, key, value) = row?;
            let Some(kind_enum) = Kind::from_name(&kind) else {
                continue;
            };
            state
                .restore(kind_enum, key.clone(), &value)
                .map_err(|source| PersistError::Corrupt { kind, key, source })?;
        }
        Ok(state)
    }

    /// Writes the changed records in one transaction.
    pub fn write(&mut self, state: &State, changes: &Changes) -> Result<(), PersistError> {
        if changes.0.is_empty() {
            return Ok(());
        }
        let transaction = self.connection.transaction()?;
        {
            let mut upsert = transaction.prepare_cached(
                "INSERT INTO records (kind, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
            )?;
            let mut delete =
                transaction.prepare_cached("DELETE FROM records WHERE kind = ?1 AND key = ?2")?;
            for (kind, key) in &changes.0 {
                match state.record(*kind, key) {
                    Some(json) => upsert.execute(params![kind.name(), key, json?])?,
                    None => delete.execute(params![kind.name(), key])?,
                };
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// Forgets everything (the control API's reset).
    pub fn clear(&mut self) -> Result<(), PersistError> {
        self.connection.execute("DELETE FROM records", [])?;
        Ok(())
    }
}
