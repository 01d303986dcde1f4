//! Plain PostgreSQL access for tests that set a database up as an administrator would (roles,
//! schemas, grants) and count what is there, outside jobsync's own layers.

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, RunQueryDsl};

/// Runs `statements` (separated by `;`) as one batch at `url`.
pub fn pg_sql(url: &str, statements: &str) -> Result<(), String> {
    let mut conn = PgConnection::establish(url).map_err(|e| e.to_string())?;
    conn.batch_execute(statements).map_err(|e| e.to_string())
}

/// The `n` of `query` (which must select one BIGINT named `n`) at `url`.
pub fn pg_count(url: &str, query: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = PgConnection::establish(url).expect("connect to the test PostgreSQL");
    diesel::sql_query(query)
        .get_result::<N>(&mut conn)
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .n
}

/// `admin`'s URL (`postgres://USER:PASSWORD@HOST/DB?…`) as `user` with password `pw`, on
/// `database`. A password of fewer than 4 characters, so that jobsync's masking of passwords
/// wherever they occur leaves the messages whole.
pub fn pg_url_as(admin: &str, user: &str, database: &str) -> String {
    let rest = &admin[admin.find('@').unwrap()..];
    let host = &rest[..rest.find('/').unwrap()];
    format!("postgres://{user}:pw{host}/{database}")
}
