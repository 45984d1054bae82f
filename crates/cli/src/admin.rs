//! `ushuru migrate` and `ushuru admin`: the operator's commands, straight on the database
//! (SQLite file or PostgreSQL), beside or without a running `serve`. Everything `admin`
//! changes is written to the audit log with the actor `cli`. Keys are printed once, when
//! issued, and never again: only their hash and prefix are kept.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::json;
use ushuru_store::{BranchId, NewAuditEvent, Scope, Store};

/// Where the database is: the same options and variables as `serve`.
#[derive(clap::Args)]
pub struct DatabaseArgs {
    /// The data directory whose SQLite database to use
    #[arg(long, env = "USHURU_DATA_DIR", default_value = "ushuru-data")]
    data_dir: PathBuf,
    /// A PostgreSQL URL (postgres://…) instead of the SQLite file in the data directory
    #[arg(long, env = "USHURU_DATABASE_URL")]
    database_url: Option<String>,
}

impl DatabaseArgs {
    async fn open(&self) -> anyhow::Result<Store> {
        let url = match &self.database_url {
            Some(url) => url.clone(),
            None => {
                let path = self.data_dir.join("ushuru.sqlite");
                if !path.exists() {
                    bail!(
                        "no database at {}: give --data-dir or --database-url (or run `ushuru migrate` to create one)",
                        path.display()
                    );
                }
                path.to_string_lossy().into_owned()
            }
        };
        Store::connect(&url)
            .await
            .context("cannot open the database")
    }
}

#[derive(clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(clap::Args)]
pub struct AdminArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// The vault's master key file, as for `serve` (rotations only; `USHURU_MASTER_KEY`
    /// is read too, and without either the data directory's `master.key`)
    #[arg(long, env = "USHURU_MASTER_KEY_FILE", value_name = "FILE")]
    master_key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(clap::Subcommand)]
enum AdminCommand {
    /// Operator keys (ROLE_ADMIN): they open the /v2/admin routes
    #[command(subcommand)]
    OperatorKey(OperatorKeyCommand),
    /// Every tenant with its branches (a branch's id is its deviceId)
    Tenants,
    /// Creates a tenant (a taxpayer, by PIN)
    TenantCreate {
        #[arg(long)]
        tin: String,
        #[arg(long)]
        name: String,
    },
    /// Adds a branch to a tenant; prints its deviceId
    BranchAdd {
        #[arg(long)]
        tin: String,
        /// KRA's branch id: two digits (00 is the head office)
        #[arg(long, value_parser = crate::serve::parse_bhf_id)]
        bhf_id: String,
    },
    /// Initialises a branch's device on a control unit (selectInitOsdcInfo) and seals the
    /// cmcKey it issues; `serve` signs for the branch from its next start (POST
    /// /v2/admin/tenants provisions a branch in a running `serve`, served at once)
    DeviceInit {
        #[arg(long)]
        device_id: i64,
        /// The control unit: an OSCU server, a VSCU JAR or any compatible endpoint
        #[arg(long, value_name = "URL")]
        control_unit: String,
        /// oscu, vscu or gavaconnect
        #[arg(long, default_value = "oscu", value_parser = crate::serve::parse_profile)]
        profile: ushuru_kra::Profile,
        /// The device's serial number
        #[arg(long)]
        serial: String,
    },
    /// Branch API keys
    #[command(subcommand)]
    Key(KeyCommand),
    /// OAuth client credentials for a branch (POST /oauth/token)
    #[command(subcommand)]
    OauthClient(OAuthClientCommand),
    /// Key rotations, while `serve` runs or not
    #[command(subcommand)]
    Rotate(RotateCommand),
    /// The security audit log, oldest first, as JSON lines
    Audit {
        /// Events after this id
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(clap::Subcommand)]
enum OperatorKeyCommand {
    /// Issues an operator key and prints it, once
    Issue {
        /// Who it is for
        #[arg(long)]
        name: String,
    },
    /// Every operator key, never the keys themselves
    List,
    /// Revokes an operator key at once
    Revoke {
        #[arg(long)]
        key_id: i64,
    },
}

#[derive(clap::Subcommand)]
enum RotateCommand {
    /// Seals a branch's cmcKey under a new data key
    DataKey {
        /// The branch's id (see `ushuru admin tenants`)
        #[arg(long)]
        device_id: i64,
    },
    /// Makes a new master key version (in the key file) and re-wraps every data key
    MasterKey,
}

#[derive(clap::Subcommand)]
enum OAuthClientCommand {
    /// Issues a client for a branch and prints its id and secret (the secret once)
    Issue {
        /// The branch's id (see `ushuru admin tenants`)
        #[arg(long)]
        device_id: i64,
        /// Who it is for
        #[arg(long)]
        name: String,
    },
    /// Revokes a client and every token it holds
    Revoke {
        /// The client's numeric id
        #[arg(long)]
        id: i64,
    },
}

#[derive(clap::Subcommand)]
enum KeyCommand {
    /// Issues a key for a branch and prints it, once
    Issue {
        /// The branch's id (see `ushuru admin tenants`)
        #[arg(long)]
        device_id: i64,
        /// Who it is for
        #[arg(long)]
        name: String,
    },
    /// A branch's keys, never the keys themselves
    List {
        #[arg(long)]
        device_id: i64,
    },
    /// Revokes a key at once
    Revoke {
        #[arg(long)]
        key_id: i64,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let url = match &args.database.database_url {
            Some(url) => url.clone(),
            None => {
                std::fs::create_dir_all(&args.database.data_dir).with_context(|| {
                    format!("cannot create {}", args.database.data_dir.display())
                })?;
                args.database
                    .data_dir
                    .join("ushuru.sqlite")
                    .to_string_lossy()
                    .into_owned()
            }
        };
        let store = Store::connect(&url)
            .await
            .context("cannot open the database")?;
        let applied = store
            .migrate()
            .await
            .context("cannot migrate the database")?;
        if applied.is_empty() {
            println!("the database is up to date");
        } else {
            for name in applied {
                println!("applied {name}");
            }
        }
        Ok(())
    })
}

pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let store = args.database.open().await?;
        let now = chrono::Utc::now();
        match args.command {
            AdminCommand::OperatorKey(OperatorKeyCommand::Issue { name }) => {
                let name = checked_name(&name)?;
                let (key, record) = store.create_operator_key(name).await?;
                store
                    .audit(
                        NewAuditEvent::new(now, "cli", "operator_key.issued")
                            .detail(json!({"keyId": record.id, "prefix": record.prefix, "name": name})),
                    )
                    .await?;
                println!("{key}");
                eprintln!(
                    "operator key {} ({}) issued; it is shown only now",
                    record.id, record.prefix
                );
            }
            AdminCommand::OperatorKey(OperatorKeyCommand::List) => {
                for listed in store.operator_keys().await? {
                    println!(
                        "{}",
                        json!({
                            "keyId": listed.key.id, "prefix": listed.key.prefix, "name": listed.key.name,
                            "createdAt": listed.created_at.to_rfc3339(),
                            "lastUsedAt": listed.last_used_at.map(|t| t.to_rfc3339()),
                            "revokedAt": listed.revoked_at.map(|t| t.to_rfc3339()),
                        })
                    );
                }
            }
            AdminCommand::OperatorKey(OperatorKeyCommand::Revoke { key_id }) => {
                let Some(key) = store.revoke_operator_key(key_id, now).await? else {
                    bail!("no live operator key with id {key_id}");
                };
                store
                    .audit(
                        NewAuditEvent::new(now, "cli", "operator_key.revoked")
                            .detail(json!({"keyId": key.id, "prefix": key.prefix})),
                    )
                    .await?;
                eprintln!("operator key {} ({}) revoked", key.id, key.prefix);
            }
            AdminCommand::Tenants => {
                for tenant in store.tenants_overview().await? {
                    for branch in &tenant.branches {
                        println!(
                            "{}",
                            json!({
                                "tenantId": tenant.tenant.id.0, "tin": tenant.tenant.tin,
                                "deviceId": branch.id.0, "bhfId": branch.bhf_id,
                                "sdcId": branch.sdc_id,
                            })
                        );
                    }
                }
            }
            AdminCommand::TenantCreate { tin, name } => {
                let name = checked_name(&name)?;
                if store.tenant_by_tin(&tin).await?.is_some() {
                    bail!("a tenant with PIN {tin} exists already");
                }
                let tenant = store.create_tenant(tin.trim(), name).await?;
                store
                    .audit(
                        NewAuditEvent::new(now, "cli", "tenant.created")
                            .tenant(tenant.id)
                            .detail(json!({"tin": tenant.tin})),
                    )
                    .await?;
                println!("{}", json!({"tenantId": tenant.id.0, "tin": tenant.tin}));
            }
            AdminCommand::BranchAdd { tin, bhf_id } => {
                let Some(tenant) = store.tenant_by_tin(&tin).await? else {
                    bail!("no tenant with PIN {tin} (see `ushuru admin tenants`)");
                };
                if store.branch_by_id(tenant.id, &bhf_id).await?.is_some() {
                    bail!("{tin} has a branch {bhf_id} already");
                }
                let branch = store.create_branch(tenant.id, &bhf_id).await?;
                store
                    .audit(
                        NewAuditEvent::new(now, "cli", "branch.created")
                            .scope(branch.scope())
                            .detail(json!({"bhfId": bhf_id})),
                    )
                    .await?;
                println!("{}", json!({"deviceId": branch.id.0, "tin": tin, "bhfId": bhf_id}));
            }
            AdminCommand::DeviceInit {
                device_id,
                control_unit,
                profile,
                serial,
            } => {
                let scope = scope_of(&store, device_id).await?;
                if store.device(scope).await?.is_some() {
                    bail!("device {device_id} is initialised already");
                }
                let overview = store.tenants_overview().await?;
                let (tin, bhf_id) = overview
                    .iter()
                    .find_map(|t| {
                        let b = t.branches.iter().find(|b| b.id == scope.branch)?;
                        Some((t.tenant.tin.clone(), b.bhf_id.clone()))
                    })
                    .context("the branch went away")?;
                let vault = crate::serve::open_vault(
                    &args.database.data_dir,
                    args.master_key_file.as_deref(),
                    crate::serve::DevelopmentKey::MustExist,
                )?;
                // Over HTTP only: the built-in sandbox lives inside a running `serve`.
                let client = ushuru_kra::KraClient::new(crate::serve::client_config(
                    &control_unit,
                    profile,
                    &tin,
                    &bhf_id,
                ))?;
                let device =
                    crate::serve::initialise_device(&client, (&vault, scope), &serial).await?;
                store.save_device(scope, &device).await?;
                store
                    .audit(
                        NewAuditEvent::new(now, "cli", "device.initialised")
                            .scope(scope)
                            .detail(json!({
                                "sdcId": device.sdc_id,
                                "controlUnit": device.control_unit_url,
                                "dataKeyVersion": device.cmc_key.data_key.version,
                                "masterKeyVersion": device.cmc_key.data_key.master_version,
                            })),
                    )
                    .await?;
                println!(
                    "{}",
                    json!({"deviceId": device_id, "sdcId": device.sdc_id, "mrcNo": device.mrc_no})
                );
                eprintln!("device {device_id} initialised; serve signs for it from its next start");
            }
            AdminCommand::Key(KeyCommand::Issue { device_id, name }) => {
                let name = checked_name(&name)?;
                let scope = scope_of(&store, device_id).await?;
                let (key, record) = store.create_api_key(scope, name).await?;
                store
                    .audit(
                        NewAuditEvent::new(now, "cli", "api_key.issued")
                            .scope(scope)
                            .detail(json!({"keyId": record.id, "prefix": record.prefix, "clientName": name})),
                    )
                    .await?;
                println!("{key}");
                eprintln!(
                    "key {} ({}) issued for device {device_id}; it is shown only now",
                    record.id, record.prefix
                );
            }
            AdminCommand::Key(KeyCommand::List { device_id }) => {
                let scope = scope_of(&store, device_id).await?;
                for key in store.api_keys(scope).await? {
                    println!(
                        "{}",
                        json!({
                            "keyId": key.id, "prefix": key.prefix, "clientName": key.name,
                            "createdAt": key.created_at.to_rfc3339(),
                            "lastUsedAt": key.last_used_at.map(|t| t.to_rfc3339()),
                            "revokedAt": key.revoked_at.map(|t| t.to_rfc3339()),
                        })
                    );
                }
            }
            AdminCommand::Key(KeyCommand::Revoke { key_id }) => {
                let Some(key) = store.revoke_api_key_by_id(key_id, now).await? else {
                    bail!("no live API key with id {key_id}");
                };
                store
                    .audit(
                        NewAuditEvent::new(now, "cli", "api_key.revoked")
                            .scope(key.scope)
                            .detail(json!({"keyId": key.id, "prefix": key.prefix})),
                    )
                    .await?;
                eprintln!("key {} ({}) revoked", key.id, key.prefix);
            }
            AdminCommand::OauthClient(OAuthClientCommand::Issue { device_id, name }) => {
                let name = checked_name(&name)?;
                let scope = scope_of(&store, device_id).await?;
                let (secret, client) = store.create_oauth_client(scope, name).await?;
                store
                    .audit(
                        NewAuditEvent::new(now, "cli", "oauth_client.issued")
                            .scope(scope)
                            .detail(json!({"id": client.id, "clientId": client.client_id, "clientName": name})),
                    )
                    .await?;
                println!(
                    "{}",
                    json!({"id": client.id, "clientId": client.client_id, "clientSecret": secret})
                );
                eprintln!("OAuth client {} issued for device {device_id}; its secret is shown only now", client.id);
            }
            AdminCommand::OauthClient(OAuthClientCommand::Revoke { id }) => {
                let Some(client) = store.revoke_oauth_client(id, now).await? else {
                    bail!("no live OAuth client with id {id}");
                };
                store
                    .audit(
                        NewAuditEvent::new(now, "cli", "oauth_client.revoked")
                            .scope(client.scope)
                            .detail(json!({"id": client.id, "clientId": client.client_id})),
                    )
                    .await?;
                eprintln!("OAuth client {} ({}) revoked", client.id, client.client_id);
            }
            AdminCommand::Rotate(rotate) => {
                let vault = crate::serve::open_vault(
                    &args.database.data_dir,
                    args.master_key_file.as_deref(),
                    crate::serve::DevelopmentKey::MustExist,
                )?;
                match rotate {
                    RotateCommand::DataKey { device_id } => {
                        let scope = scope_of(&store, device_id).await?;
                        let done =
                            ushuru_api::keys::rotate_data_key(&store, &vault, None, scope, "cli")
                                .await?;
                        println!(
                            "{}",
                            json!({"deviceId": device_id, "fromVersion": done.from,
                                   "toVersion": done.to, "masterKeyVersion": done.master_version})
                        );
                    }
                    RotateCommand::MasterKey => {
                        let done =
                            ushuru_api::keys::rotate_master_key(&store, &vault, None, "cli").await?;
                        println!(
                            "{}",
                            json!({"fromVersions": done.from, "toVersion": done.to,
                                   "newVersion": done.new_version, "rewrapped": done.rewrapped})
                        );
                    }
                }
                eprintln!(
                    "a running serve goes on with the key it holds, which still opens; it opens the new one after its next start"
                );
            }
            AdminCommand::Audit { after, limit } => {
                for event in store.audit_events(after, limit.clamp(1, 10_000)).await? {
                    println!(
                        "{}",
                        json!({
                            "id": event.id, "at": event.at.to_rfc3339(), "actor": event.actor,
                            "action": event.action, "tenantId": event.tenant.map(|t| t.0),
                            "deviceId": event.branch.map(|b| b.0), "detail": event.detail,
                        })
                    );
                }
            }
        }
        Ok(())
    })
}

fn checked_name(name: &str) -> anyhow::Result<&str> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        bail!("--name must be 1 to 100 characters");
    }
    Ok(name)
}

async fn scope_of(store: &Store, device_id: i64) -> anyhow::Result<Scope> {
    store
        .tenants_overview()
        .await?
        .into_iter()
        .find_map(|tenant| {
            tenant
                .branches
                .iter()
                .find(|b| b.id == BranchId(device_id))
                .map(|b| Scope {
                    tenant: tenant.tenant.id,
                    branch: b.id,
                })
        })
        .with_context(|| format!("no branch with id {device_id} (see `ushuru admin tenants`)"))
}
