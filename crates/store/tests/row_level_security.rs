//! Row-level security in PostgreSQL itself (migration 0013), tested the way an attacker who
//! took over the service's connection would try it: as the service's own login (a member
//! of `ushuru_app` and nothing more, `USHURU_TEST_POSTGRES_SERVICE_URL`, which
//! `scripts/test` creates), with hand-written SQL against every tenant-owned table.
//!
//! Two taxpayers are written by the owner: A with branches A1 and A2, B with one branch.
//! Every tenant-owned table holds rows of each.

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokio_postgres::{Client, NoTls};
use ushuru_store::Store;

/// Every tenant-owned table, with the column naming its tenant.
const TENANT_TABLES: [(&str, &str); 15] = [
    ("tenants", "id"),
    ("branches", "tenant_id"),
    ("sales", "tenant_id"),
    ("sale_lines", "tenant_id"),
    ("credit_notes", "tenant_id"),
    ("outbox", "tenant_id"),
    ("receipts", "tenant_id"),
    ("exchanges", "tenant_id"),
    ("sequence_findings", "tenant_id"),
    ("api_keys", "tenant_id"),
    ("idempotency_keys", "tenant_id"),
    ("registered_items", "tenant_id"),
    ("operations", "tenant_id"),
    ("oauth_clients", "tenant_id"),
    ("oauth_tokens", "tenant_id"),
];

/// The tables whose rows belong to one branch, with the column naming it.
const BRANCH_TABLES: [(&str, &str); 13] = [
    ("branches", "id"),
    ("sales", "branch_id"),
    ("sale_lines", "branch_id"),
    ("credit_notes", "branch_id"),
    ("outbox", "branch_id"),
    ("receipts", "branch_id"),
    ("exchanges", "branch_id"),
    ("sequence_findings", "branch_id"),
    ("api_keys", "branch_id"),
    ("registered_items", "branch_id"),
    ("operations", "branch_id"),
    ("oauth_clients", "branch_id"),
    ("oauth_tokens", "branch_id"),
];

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run ./scripts/test, which starts PostgreSQL and sets it")
    })
}

fn in_database(url: &str, name: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("{url} has no database part"),
    }
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The ids the owner wrote: (tenant, branch) of A1, A2 and B.
struct Written {
    a: i64,
    a1: i64,
    a2: i64,
    b: i64,
    b1: i64,
}

/// A fresh database migrated by its owner, and a row in every tenant-owned table for each
/// of A1, A2 and B1, written by the owner (who sees any tenant only with `ushuru.system`
/// on, as a backup does).
async fn database() -> (String, Written) {
    let owner_url = env("USHURU_TEST_POSTGRES_URL");
    let name = format!("ushuru_rls_{}", std::process::id());
    let admin = connect(&owner_url).await;
    for statement in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin.batch_execute(&statement).await.unwrap();
    }
    let url = in_database(&owner_url, &name);
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let owner = connect(&url).await;
    owner
        .batch_execute("SET ushuru.system = 'on'")
        .await
        .unwrap();
    let tenant = async |tin: &str| -> i64 {
        owner
            .query_one(
                "INSERT INTO tenants (tin, name) VALUES ($1, 'Taxpayer') RETURNING id",
                &[&tin],
            )
            .await
            .unwrap()
            .get(0)
    };
    let a = tenant("P051111111A").await;
    let b = tenant("P052222222B").await;
    let mut branches = Vec::new();
    for (tenant, bhf) in [(a, "00"), (a, "01"), (b, "00")] {
        let branch: i64 = owner
            .query_one(
                "INSERT INTO branches (tenant_id, bhf_id, sdc_id, mrc_no, cmc_key_nonce, cmc_key_sealed,
                        data_key_version, data_key_nonce, data_key_wrapped, master_key_version)
                 VALUES ($1, $2, $3, 'WIS' || $2, '\\x01', '\\xc0ffee', 1, '\\x02', '\\x0b', 1)
                 RETURNING id",
                &[&tenant, &bhf, &format!("KRACU{tenant}{bhf}")],
            )
            .await
            .unwrap()
            .get(0);
        branches.push((tenant, branch));
    }
    for &(tenant, branch) in &branches {
        write_branch_rows(&owner, tenant, branch).await;
    }
    (
        url,
        Written {
            a,
            a1: branches[0].1,
            a2: branches[1].1,
            b,
            b1: branches[2].1,
        },
    )
}

/// One row of the branch in every tenant-owned table.
async fn write_branch_rows(owner: &Client, tenant: i64, branch: i64) {
    let sql = format!(
        "WITH sale AS (
            INSERT INTO sales (tenant_id, branch_id, invc_no, status, tot_amt, cur_rcpt_no, sdc_id)
            VALUES ({tenant}, {branch}, 1, 'SIGNED', 116.00, 1, 'SDC{branch}') RETURNING id),
         note AS (
            INSERT INTO sales (tenant_id, branch_id, invc_no, status, tot_amt, rcpt_ty_cd)
            VALUES ({tenant}, {branch}, 2, 'PENDING_SYNC', 116.00, 'R') RETURNING id),
         line AS (
            INSERT INTO sale_lines (tenant_id, branch_id, sale_id, item_seq, item_cd, item_nm,
                                    tax_ty_cd, qty, uprc, dc_amt, taxbl_amt, tax_amt, tot_amt)
            SELECT {tenant}, {branch}, id, 1, 'KE1NTXU0000001', 'Bread', 'B', 1, 116, 0, 100, 16, 116
            FROM sale),
         credit AS (
            INSERT INTO credit_notes (sale_id, tenant_id, branch_id, original_sale_id, rfd_rsn_cd)
            SELECT note.id, {tenant}, {branch}, sale.id, '01' FROM note, sale),
         queued AS (
            INSERT INTO outbox (tenant_id, branch_id, sale_id, invc_no, payload, payload_sha256)
            SELECT {tenant}, {branch}, id, 2, '{{}}', 'sha' FROM note),
         receipt AS (
            INSERT INTO receipts (tenant_id, branch_id, sdc_id, rcpt_no, sale_id)
            SELECT {tenant}, {branch}, 'SDC{branch}', 1, id FROM sale),
         exchange AS (
            INSERT INTO exchanges (tenant_id, branch_id, sale_id, endpoint, attempt, request_body,
                                   outcome, elapsed_ms)
            SELECT {tenant}, {branch}, id, '/trnsSales/saveSales', 1, '{{}}', 'SIGNED', 3 FROM sale)
         INSERT INTO sequence_findings (tenant_id, branch_id, sdc_id, kind, expected, found)
         VALUES ({tenant}, {branch}, 'SDC{branch}', 'GAP', 1, 3);
         INSERT INTO api_keys (tenant_id, branch_id, prefix, key_sha256, name)
         VALUES ({tenant}, {branch}, 'ushk_{branch}', 'hash-of-key-{branch}', 'till');
         INSERT INTO idempotency_keys (tenant_id, key, request_sha256, created_at, expires_at)
         VALUES ({tenant}, 'key-{branch}', 'sha', now(), now() + interval '1 day');
         INSERT INTO registered_items (tenant_id, branch_id, item_cd, registered_at)
         VALUES ({tenant}, {branch}, 'KE1NTXU0000001', now());
         INSERT INTO operations (tenant_id, branch_id, kind, operation_key, request_sha256, endpoint,
                                 payload, payload_sha256, summary, created_at)
         VALUES ({tenant}, {branch}, 'ITEM', 'item-{branch}', 'sha', '/items/saveItems', '{{}}',
                 'sha', '{{}}', now());
         WITH client AS (
            INSERT INTO oauth_clients (tenant_id, branch_id, client_id, secret_sha256, name)
            VALUES ({tenant}, {branch}, 'client-{branch}', 'secret-hash', 'erp') RETURNING id)
         INSERT INTO oauth_tokens (token_sha256, client, tenant_id, branch_id, expires_at)
         SELECT 'token-hash-{branch}', id, {tenant}, {branch}, now() + interval '1 hour' FROM client;"
    );
    owner.batch_execute(&sql).await.unwrap();
}

/// The service's own login, in the test database.
async fn service(url: &str) -> Client {
    let service_url = env("USHURU_TEST_POSTGRES_SERVICE_URL");
    let database = url.rsplit_once('/').unwrap().1;
    connect(&in_database(&service_url, database)).await
}

async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

async fn enter(client: &Client, tenant: Option<i64>, branch: Option<i64>) {
    client.batch_execute("BEGIN").await.unwrap();
    let tenant = tenant.map(|t| t.to_string()).unwrap_or_default();
    let branch = branch.map(|b| b.to_string()).unwrap_or_default();
    client
        .execute(
            "SELECT set_config('ushuru.tenant_id', $1, true), set_config('ushuru.branch_id', $2, true)",
            &[&tenant, &branch],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_keeps_each_tenant_and_branch_to_its_own_rows() {
    let (url, ids) = database().await;
    let service = service(&url).await;

    // The login owns nothing, is no superuser and cannot bypass row-level security; it acts
    // through ushuru_app alone.
    let row = service
        .query_one(
            "SELECT rolsuper, rolbypassrls, pg_has_role(current_user, 'ushuru_app', 'MEMBER')
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, bool>(0),
            row.get::<_, bool>(1),
            row.get::<_, bool>(2)
        ),
        (false, false, true)
    );
    assert_eq!(
        count(
            &service,
            "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
                OR relowner = (SELECT oid FROM pg_roles WHERE rolname = 'ushuru_app')"
        )
        .await,
        0,
        "owns nothing"
    );
    // Nor can it create anything in the schema the definer functions search.
    let creates: bool = service
        .query_one(
            "SELECT has_schema_privilege(current_user, current_schema(), 'CREATE')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!creates, "the service may create in the schema");
    // Every table that names a tenant has FORCE ROW LEVEL SECURITY and a policy; a table
    // added later without them fails here.
    let unguarded = service
        .query(
            "SELECT c.relname FROM pg_class c
             WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace
               AND (c.relname = 'tenants' OR EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped))
               AND NOT (c.relrowsecurity AND c.relforcerowsecurity
                        AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid))
               AND c.relname <> 'audit_events'",
            &[],
        )
        .await
        .unwrap();
    let unguarded: Vec<String> = unguarded.iter().map(|r| r.get(0)).collect();
    assert!(
        unguarded.is_empty(),
        "without row-level security: {unguarded:?}"
    );

    // With no tenant set, nothing is visible.
    for (table, _) in TENANT_TABLES {
        assert_eq!(
            count(&service, &format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }

    // Tenant A: its own rows are there (so a 0 below means something), B's are not, and
    // B's rows can be neither changed, removed nor written.
    enter(&service, Some(ids.a), None).await;
    for (table, column) in TENANT_TABLES {
        let own = count(
            &service,
            &format!("SELECT count(*) FROM {table} WHERE {column} = {}", ids.a),
        )
        .await;
        assert!(own >= 1, "{table}: tenant A sees its own rows");
        let foreign = format!("{column} = {}", ids.b);
        assert_eq!(
            count(
                &service,
                &format!("SELECT count(*) FROM {table} WHERE {foreign}")
            )
            .await,
            0,
            "{table}"
        );
        assert_eq!(
            count(&service, &format!("SELECT count(*) FROM {table}")).await,
            own,
            "{table}: only A's"
        );
        // (tenants.id is an identity column: its row is touched through its name instead.)
        let touched = if table == "tenants" { "name" } else { column };
        let updated = service
            .execute(
                &format!("UPDATE {table} SET {touched} = {touched} WHERE {foreign}"),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(updated, 0, "{table}: update of B's rows");
        let deleted = service
            .execute(&format!("DELETE FROM {table} WHERE {foreign}"), &[])
            .await
            .unwrap();
        assert_eq!(deleted, 0, "{table}: delete of B's rows");
    }
    // B's device secrets and keys, asked for by name.
    assert_eq!(
        count(
            &service,
            &format!(
                "SELECT count(*) FROM branches WHERE id = {} AND cmc_key_sealed IS NOT NULL",
                ids.b1
            )
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &service,
            "SELECT count(*) FROM api_keys WHERE key_sha256 LIKE 'hash-of-key-%'"
        )
        .await,
        2
    );
    // Moving A's row into B is refused (the policy's check), and so is writing one of B's.
    let moved = service
        .execute(
            &format!(
                "UPDATE api_keys SET tenant_id = {}, branch_id = {} WHERE tenant_id = {}",
                ids.b, ids.b1, ids.a
            ),
            &[],
        )
        .await;
    assert!(moved.is_err(), "an update that would hand A's keys to B");
    service.batch_execute("ROLLBACK").await.unwrap();
    enter(&service, Some(ids.a), None).await;
    let written = service
        .execute(
            &format!(
                "INSERT INTO api_keys (tenant_id, branch_id, prefix, key_sha256, name)
                      VALUES ({}, {}, 'ushk_x', 'planted', 'x')",
                ids.b, ids.b1
            ),
            &[],
        )
        .await;
    assert_eq!(
        written.unwrap_err().code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "a key planted in B"
    );
    service.batch_execute("ROLLBACK").await.unwrap();

    // Branch A1: A2's rows are invisible and untouchable too, even within one taxpayer.
    enter(&service, Some(ids.a), Some(ids.a1)).await;
    for (table, column) in BRANCH_TABLES {
        assert!(
            count(
                &service,
                &format!("SELECT count(*) FROM {table} WHERE {column} = {}", ids.a1)
            )
            .await
                >= 1,
            "{table}"
        );
        assert_eq!(
            count(
                &service,
                &format!("SELECT count(*) FROM {table} WHERE {column} <> {}", ids.a1)
            )
            .await,
            0,
            "{table}"
        );
        let deleted = service
            .execute(
                &format!("DELETE FROM {table} WHERE {column} = {}", ids.a2),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(deleted, 0, "{table}: delete of A2's rows");
    }
    service.batch_execute("COMMIT").await.unwrap();

    // The flag the definer functions use opens nothing by itself: the service is not the
    // owner. Nor can it leave ushuru_app, or turn the policies off.
    service
        .batch_execute("SET ushuru.system = 'on'")
        .await
        .unwrap();
    for (table, _) in TENANT_TABLES {
        assert_eq!(
            count(&service, &format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table} with ushuru.system on"
        );
    }
    service.batch_execute("RESET ushuru.system").await.unwrap();
    assert!(service.batch_execute("SET ROLE ushuru_test").await.is_err());
    assert!(
        service
            .batch_execute("ALTER TABLE sales DISABLE ROW LEVEL SECURITY")
            .await
            .is_err()
    );
    assert!(
        service
            .batch_execute("ALTER TABLE sales NO FORCE ROW LEVEL SECURITY")
            .await
            .is_err()
    );
    assert!(
        service
            .batch_execute("DROP POLICY sales_scope ON sales")
            .await
            .is_err()
    );

    // The definer functions answer what they are for, and nothing else opens with them: a
    // key found by its hash names its tenant, and B's rows stay hidden in the same
    // transaction afterwards.
    enter(&service, Some(ids.a), None).await;
    let found = service
        .query_one(
            &format!(
                "SELECT tenant_id, branch_id FROM ushuru_api_key_by_hash('hash-of-key-{}')",
                ids.b1
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (found.get::<_, i64>(0), found.get::<_, i64>(1)),
        (ids.b, ids.b1)
    );
    for (table, column) in TENANT_TABLES {
        assert_eq!(
            count(
                &service,
                &format!("SELECT count(*) FROM {table} WHERE {column} = {}", ids.b)
            )
            .await,
            0,
            "{table} after a definer call"
        );
    }
    service.batch_execute("COMMIT").await.unwrap();
    // The overview carries no key material.
    let columns: Vec<String> = service
        .prepare("SELECT * FROM ushuru_tenants_overview()")
        .await
        .unwrap()
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    assert!(
        !columns
            .iter()
            .any(|c| c.contains("key") || c.contains("sealed")),
        "{columns:?}"
    );
    assert_eq!(
        count(&service, "SELECT count(*) FROM ushuru_tenants_overview()").await,
        3
    );
    // (The checks below look at all 14 of them: 13 of migration 0013, one of 0015.)
    let definers = count(
        &service,
        "SELECT count(*) FROM pg_proc p WHERE p.proname LIKE 'ushuru\\_%'
           AND p.pronamespace = current_schema()::regnamespace AND p.prosecdef",
    )
    .await;
    assert_eq!(definers, 14);
    // Anyone else may not call them: PUBLIC's EXECUTE was revoked.
    let public = count(
        &service,
        "SELECT count(*) FROM pg_proc p WHERE p.proname LIKE 'ushuru\\_%'
           AND p.pronamespace = current_schema()::regnamespace
           AND has_function_privilege('public', p.oid, 'EXECUTE')",
    )
    .await;
    assert_eq!(public, 0);
    // Each searches pg_catalog first: nothing in the schema can stand in for a built-in.
    let unpinned = count(
        &service,
        "SELECT count(*) FROM pg_proc p WHERE p.proname LIKE 'ushuru\\_%'
           AND p.pronamespace = current_schema()::regnamespace
           AND NOT (p.prosecdef AND coalesce(p.proconfig, '{}') @> ARRAY['search_path=pg_catalog, public, pg_temp'])",
    )
    .await;
    assert_eq!(unpinned, 0, "definer functions with their own search_path");
}
