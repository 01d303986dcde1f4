//! The outbox: rows the CRM (or `import`) appends and the push drains — and the row's state
//! machine. Every change of a row's `status` is one of the named transitions here
//! ([`mark_sent`], and the [`RowUpdate`] constructors `done`, `superseded_by`, `failed`,
//! `retry_later`, `in_doubt`, `lookup_failed`, `absent`, `linked`, `waiting_for_token`, plus
//! [`retry`] for an operator's re-queue and [`fail_unreadable`]); no other module writes a status.

use super::{IDS_PER_STATEMENT, insert_in_fixed_batches, runs, transaction};
use crate::db::models::{NewOutboxRow, OpenRow, OutboxRow, OutboxStatus};
use crate::db::schema::outbox;
use crate::db::{Conn, DbError, Ts};
use crate::with_conn;
use diesel::prelude::*;

use OutboxStatus::{Done, Failed, InFlight, Pending, Superseded};

/// Appends rows in one transaction, in order; all or nothing.
pub fn insert(conn: &mut Conn, rows: &[NewOutboxRow]) -> Result<usize, DbError> {
    transaction(conn, |conn| append(conn, rows))
}

/// Appends rows, in order, in the caller's transaction (`import` streams a file through one).
/// PostgreSQL takes them in one `COPY` (binary); SQLite in multi-row statements of a fixed size,
/// which Diesel prepares once.
pub fn append(conn: &mut Conn, rows: &[NewOutboxRow]) -> Result<usize, DbError> {
    match conn {
        Conn::Pg(c) => Ok(diesel::copy_from(outbox::table)
            .from_insertable(rows)
            .execute(&mut **c)?),
        Conn::Sqlite(_) => {
            let inserted: Result<(), DbError> = insert_in_fixed_batches!(conn, outbox::table, rows);
            inserted.map(|()| rows.len())
        }
    }
}

/// Rows, newest first, optionally of one status.
pub fn list(
    conn: &mut Conn,
    status: Option<OutboxStatus>,
    limit: i64,
) -> Result<Vec<OutboxRow>, DbError> {
    let ids: Vec<i64> = with_conn!(conn, |c| {
        let mut query = outbox::table
            .select(outbox::id)
            .order(outbox::id.desc())
            .limit(limit)
            .into_boxed();
        if let Some(status) = status {
            query = query.filter(outbox::status.eq(status));
        }
        Ok::<_, DbError>(query.load(c)?)
    })?;
    let mut rows = get_many(conn, &ids)?;
    rows.reverse();
    Ok(rows)
}

/// The highest row id now: a push works on the rows that existed when it started (docs/contract.md
/// §4), so a CRM that keeps writing never keeps a cycle from ending.
pub fn ceiling(conn: &mut Conn) -> Result<i64, DbError> {
    let max: Option<i64> = with_conn!(conn, |c| outbox::table
        .select(diesel::dsl::max(outbox::id))
        .first(c)?);
    Ok(max.unwrap_or(0))
}

/// `status IN ('pending', 'in_flight')`, written as the `outbox_open` partial index's predicate
/// so that both databases serve it from that index (they cannot prove a bound list implies it).
fn is_open() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    debug_assert_eq!(OutboxStatus::OPEN, [Pending, InFlight]);
    diesel::dsl::sql("outbox.status IN ('pending', 'in_flight')")
}

/// The id just before the first open (`pending` or `in_flight`) row, where a pass's windows
/// start: an outbox of a million settled rows is not walked again on every cycle.
pub fn before_first_open(conn: &mut Conn) -> Result<i64, DbError> {
    let first: Option<i64> = with_conn!(conn, |c| outbox::table
        .filter(is_open())
        .select(diesel::dsl::min(outbox::id))
        .first(c)?);
    Ok(first.map_or(0, |id| id - 1))
}

/// Up to `limit` open (`pending` or `in_flight`) rows with `after < id <= ceiling`, in id order,
/// whether due or not (a row not yet due still holds back the later rows of its target): one
/// window of the push, so that its memory does not grow with the outbox.
///
/// A row whose payload is not valid UTF-8 (SQLite stores whatever bytes a CRM writes) fails
/// here, alone, and is left out: the second value is how many did, already counted into the run
/// in progress.
pub fn open_window(
    conn: &mut Conn,
    after: i64,
    ceiling: i64,
    limit: i64,
) -> Result<(Vec<OpenRow>, i64), DbError> {
    let window = outbox::table
        .filter(outbox::id.gt(after))
        .filter(outbox::id.le(ceiling))
        .order(outbox::id.asc())
        .limit(limit);
    // The `outbox_open` partial index holds exactly the open rows in id order: a window is a
    // range scan of it that stops at `limit`.
    let mut rows: Vec<OpenRow> = with_conn!(
        conn,
        sqlite
            | c
            | window
                .filter(is_open())
                .select((
                    outbox::id,
                    outbox::op,
                    outbox::campaign,
                    outbox::reference,
                    outbox::job_id,
                    lossy_payload(),
                    outbox::status,
                    outbox::attempts,
                    outbox::last_error,
                    outbox::next_attempt_at,
                    outbox::first_sent_at,
                    outbox::in_doubt,
                    outbox::sent_payload,
                    outbox::result_job_id,
                ))
                .load::<OpenRowBytes>(c)?
                .into_iter()
                .map(OpenRow::from)
                .collect(),
        postgres
            | c
            | window
                .filter(is_open())
                .select(OpenRow::as_select())
                .load(c)?,
    );
    // The payload was read as bytes made text, with U+FFFD in place of bytes that are not
    // UTF-8: only such rows are read again to tell a real U+FFFD from a broken payload.
    let suspects: Vec<i64> = rows
        .iter()
        .filter(|r| r.payload.contains('\u{FFFD}'))
        .map(|r| r.id)
        .collect();
    if suspects.is_empty() {
        return Ok((rows, 0));
    }
    let unreadable = fail_unreadable(conn, &suspects)?;
    rows.retain(|r| !unreadable.contains(&r.id));
    Ok((rows, unreadable.len() as i64))
}

/// On SQLite, the payload's bytes, even when a CRM stored bytes that are not UTF-8 (Diesel
/// refuses such text outright, which would stop the whole push); they are made text with U+FFFD
/// in place of the bad bytes.
fn lossy_payload() -> diesel::expression::SqlLiteral<diesel::sql_types::Binary> {
    diesel::dsl::sql::<diesel::sql_types::Binary>("CAST(outbox.payload AS BLOB)")
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// An [`OpenRow`] as read on SQLite, its payload as bytes.
#[derive(Queryable)]
struct OpenRowBytes {
    id: i64,
    op: String,
    campaign: Option<i64>,
    reference: Option<String>,
    job_id: Option<i64>,
    payload: Vec<u8>,
    status: OutboxStatus,
    attempts: i32,
    last_error: Option<String>,
    next_attempt_at: Ts,
    first_sent_at: Option<Ts>,
    in_doubt: bool,
    sent_payload: Option<String>,
    result_job_id: Option<i64>,
}

impl From<OpenRowBytes> for OpenRow {
    fn from(r: OpenRowBytes) -> Self {
        OpenRow {
            id: r.id,
            op: r.op,
            campaign: r.campaign,
            reference: r.reference,
            job_id: r.job_id,
            payload: lossy(r.payload),
            status: r.status,
            attempts: r.attempts,
            last_error: r.last_error,
            next_attempt_at: r.next_attempt_at,
            first_sent_at: r.first_sent_at,
            in_doubt: r.in_doubt,
            sent_payload: r.sent_payload,
            result_job_id: r.result_job_id,
        }
    }
}

/// Fails the rows among `ids` whose payload bytes are not UTF-8, naming the first bad byte, and
/// counts them into the run in progress (`pushed_failed`) in the same transaction; returns their
/// ids.
pub fn fail_unreadable(conn: &mut Conn, ids: &[i64]) -> Result<Vec<i64>, DbError> {
    use diesel::dsl::sql;
    use diesel::sql_types::Binary;
    // PostgreSQL text is always valid UTF-8: only SQLite can hold such bytes.
    let Conn::Sqlite(c) = conn else {
        return Ok(Vec::new());
    };
    let raw: Vec<(i64, Vec<u8>)> = outbox::table
        .filter(outbox::id.eq_any(ids))
        .select((outbox::id, sql::<Binary>("CAST(payload AS BLOB)")))
        .load(&mut **c)?;
    let mut updates = Vec::new();
    for (id, bytes) in raw {
        let Err(e) = std::str::from_utf8(&bytes) else {
            continue;
        };
        let reason = format!(
            "payload is not valid UTF-8 text (bad byte at offset {}): write it as UTF-8 JSON, \
             then re-queue with `jobsync outbox retry --id {id}`",
            e.valid_up_to()
        );
        tracing::warn!(
            outbox_id = id,
            "outbox row with a payload that is not UTF-8 failed"
        );
        updates.push((id, RowUpdate::failed(reason, None)));
    }
    if updates.is_empty() {
        return Ok(Vec::new());
    }
    let failed: Vec<i64> = updates.iter().map(|(id, _)| *id).collect();
    let counts = runs::RunCounts {
        pushed_failed: failed.len() as i64,
        ..runs::RunCounts::default()
    };
    transaction(conn, |c| {
        runs::count_into_current(c, counts)?;
        update_each(c, &updates)
    })?;
    Ok(failed)
}

/// One operation about to leave, for [`mark_sent`].
#[derive(Debug, Clone)]
pub struct Sending {
    /// The row whose operation is sent, and the rows merged into it.
    pub survivor: i64,
    pub merged: Vec<i64>,
    /// For a create: the body as sent when it is not the survivor's own payload (rows were
    /// merged into it, or it was linked).
    pub create: Option<CreateSend>,
}

#[derive(Debug, Clone)]
pub struct CreateSend {
    pub sent_payload: Option<String>,
}

/// The transition `pending → in_flight`, written before the request leaves, so that a crash at
/// any later point leaves the rows in flight. A create is also marked `in_doubt` until an answer
/// settles it, with `first_sent_at` (the API's clock, `server_now`) stamped on its first send
/// and `next_attempt_at` set to `look_after`, the earliest time a lookup may look for it (after
/// the request's timeout and a margin, so that a slow commit has landed). Merged rows remember
/// their survivor in `merged_into`.
pub fn mark_sent(
    conn: &mut Conn,
    ops: &[Sending],
    now: Ts,
    server_now: Ts,
    look_after: Ts,
) -> Result<(), DbError> {
    let mut plain: Vec<i64> = Vec::new();
    let mut creates: Vec<i64> = Vec::new();
    let mut with_body: Vec<(i64, &str)> = Vec::new();
    let mut merged: Vec<(i64, &[i64])> = Vec::new();
    for op in ops {
        match &op.create {
            Some(create) => {
                creates.push(op.survivor);
                if let Some(body) = &create.sent_payload {
                    with_body.push((op.survivor, body));
                }
            }
            None => plain.push(op.survivor),
        }
        plain.extend(&op.merged);
        if !op.merged.is_empty() {
            merged.push((op.survivor, &op.merged));
        }
    }
    // Committed durably (SQLite's `synchronous = FULL`, the connections' default) before the
    // request leaves: a mark lost with the machine would let a restarted push send again a
    // create the API applied.
    transaction(conn, |conn| {
        with_conn!(conn, |c| {
            // A patch or unqueue left in flight is sent again only after `look_after`: its
            // request may still land until then (a process that died, or that lost the sync
            // lock, with the request under way), and a re-send that landed first would then be
            // overwritten by the older change.
            for chunk in plain.chunks(IDS_PER_STATEMENT) {
                diesel::update(outbox::table.filter(outbox::id.eq_any(chunk)))
                    .set((
                        outbox::status.eq(InFlight),
                        outbox::updated_at.eq(now),
                        outbox::next_attempt_at.eq(look_after),
                    ))
                    .execute(c)?;
            }
            // One statement, so that each row is rewritten once: `first_sent_at` is kept when
            // set (a create's first send is when it is set, and only then).
            use diesel::sql_types::{Nullable, Timestamp};
            let first_sent_at =
                diesel::dsl::sql::<Nullable<Timestamp>>("COALESCE(outbox.first_sent_at, ")
                    .bind::<Timestamp, _>(server_now)
                    .sql(")");
            for chunk in creates.chunks(IDS_PER_STATEMENT) {
                diesel::update(outbox::table.filter(outbox::id.eq_any(chunk)))
                    .set((
                        outbox::status.eq(InFlight),
                        outbox::in_doubt.eq(true),
                        outbox::updated_at.eq(now),
                        outbox::next_attempt_at.eq(look_after),
                        outbox::first_sent_at.eq(first_sent_at.clone()),
                    ))
                    .execute(c)?;
            }
            for (id, body) in &with_body {
                diesel::update(outbox::table.find(*id))
                    .set(outbox::sent_payload.eq(*body))
                    .execute(c)?;
            }
            for (survivor, rows) in &merged {
                diesel::update(outbox::table.filter(outbox::id.eq_any(*rows)))
                    .set(outbox::merged_into.eq(*survivor))
                    .execute(c)?;
            }
            Ok::<_, DbError>(())
        })
    })
}

/// Rows merged into `survivors` when their operation was sent: `(row, survivor)`.
pub fn merged_into(conn: &mut Conn, survivors: &[i64]) -> Result<Vec<(i64, i64)>, DbError> {
    let mut found = Vec::new();
    for chunk in survivors.chunks(IDS_PER_STATEMENT) {
        let rows: Vec<(i64, Option<i64>)> = with_conn!(conn, |c| outbox::table
            .filter(outbox::merged_into.eq_any(chunk))
            .filter(outbox::status.eq_any(OutboxStatus::OPEN))
            .select((outbox::id, outbox::merged_into))
            .load(c)?);
        found.extend(rows.into_iter().filter_map(|(id, s)| Some((id, s?))));
    }
    Ok(found)
}

/// Applies one update per row (call inside the transaction that also updates the mirror).
///
/// A push settles a thousand rows per bulk call, mostly with the same change but each with its
/// own `result_job_id`: rows sharing a change are written together, their job ids set in the
/// same statement by a `CASE` over their ids, so that each row is rewritten once. (Setting the
/// job ids in a second statement rewrote every row twice: on PostgreSQL, two row versions and
/// two index entries per row.)
pub fn update_each(conn: &mut Conn, updates: &[(i64, RowUpdate)]) -> Result<(), DbError> {
    // Rows sharing a change, each with its own `result_job_id` change (if any).
    type Rows = Vec<(i64, Option<Option<i64>>)>;
    let mut groups: Vec<(RowUpdate, Rows)> = Vec::new();
    for (id, change) in updates {
        let mut shared = change.clone();
        let job = shared.result_job_id.take();
        match groups.iter_mut().find(|(c, _)| *c == shared) {
            Some((_, rows)) => rows.push((*id, job)),
            None => groups.push((shared, vec![(*id, job)])),
        }
    }
    for (mut shared, rows) in groups {
        shared.updated_at.get_or_insert_with(Ts::now);
        if let Some(Some(error)) = &mut shared.last_error {
            *error = crate::secret::scrub(error);
        }
        for chunk in rows.chunks(CASE_ROWS) {
            update_with_job_ids(conn, chunk, &shared)?;
        }
    }
    Ok(())
}

/// Rows per statement of [`update_each`]: a `CASE` is a list the database walks for every row,
/// cheap at this length (at a thousand branches it cost SQLite several times the update).
const CASE_ROWS: usize = 100;

/// Applies `change` to `rows`, and to each its own `result_job_id` change, in one statement.
fn update_with_job_ids(
    conn: &mut Conn,
    rows: &[(i64, Option<Option<i64>>)],
    change: &RowUpdate,
) -> Result<(), DbError> {
    use diesel::dsl::sql;
    use diesel::sql_types::{BigInt, Nullable};
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    let case = job_ids_case(rows);
    with_conn!(conn, |c| {
        let target = outbox::table.filter(outbox::id.eq_any(&ids));
        match &case {
            Some(case) => {
                let job_ids = outbox::result_job_id.eq(sql::<Nullable<BigInt>>(case));
                diesel::update(target).set((change, job_ids)).execute(c)?
            }
            None => diesel::update(target).set(change).execute(c)?,
        };
        Ok::<_, DbError>(())
    })
}

/// `CASE outbox.id WHEN … THEN … ELSE outbox.result_job_id END` over the rows whose
/// `result_job_id` changes, or `None` when none does. Every value is an integer literal, so the
/// text can carry nothing else.
fn job_ids_case(rows: &[(i64, Option<Option<i64>>)]) -> Option<String> {
    use std::fmt::Write as _;
    let mut case = String::from("CASE outbox.id");
    let mut any = false;
    for (id, job) in rows {
        let Some(job) = job else { continue };
        any = true;
        match job {
            Some(job) => write!(case, " WHEN {id} THEN {job}"),
            None => write!(case, " WHEN {id} THEN NULL"),
        }
        .expect("writing to a String");
    }
    case.push_str(" ELSE outbox.result_job_id END");
    any.then_some(case)
}

/// Row counts by status (every status present, zero when none).
pub fn counts(conn: &mut Conn) -> Result<Vec<(String, i64)>, DbError> {
    let found: Vec<(String, i64)> = with_conn!(conn, |c| outbox::table
        .group_by(outbox::status)
        .select((outbox::status, diesel::dsl::count_star()))
        .load(c)?);
    let mut all: Vec<(String, i64)> = OutboxStatus::ALL
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    for (status, n) in found {
        match all.iter_mut().find(|(s, _)| *s == status) {
            Some(slot) => slot.1 = n,
            None => all.push((status, n)),
        }
    }
    Ok(all)
}

/// When the oldest pending row was written.
pub fn oldest_pending(conn: &mut Conn) -> Result<Option<Ts>, DbError> {
    with_conn!(conn, |c| Ok(outbox::table
        .filter(is_open())
        .select(diesel::dsl::min(outbox::created_at))
        .first::<Option<Ts>>(c)?))
}

/// A transition of one row, built only by the named constructors below (one per edge of the
/// state machine) and written with [`update_each`].
#[derive(Debug, Clone, Default, PartialEq, AsChangeset)]
#[diesel(table_name = outbox)]
pub struct RowUpdate {
    status: Option<OutboxStatus>,
    attempts: Option<i32>,
    last_error: Option<Option<String>>,
    http_status: Option<Option<i32>>,
    result_job_id: Option<Option<i64>>,
    next_attempt_at: Option<Ts>,
    in_doubt: Option<bool>,
    first_sent_at: Option<Option<Ts>>,
    updated_at: Option<Ts>,
}

impl RowUpdate {
    /// The same transition, stamped as made at `at` (retention counts from `updated_at`).
    pub fn as_of(mut self, at: Ts) -> Self {
        self.updated_at = Some(at);
        self
    }

    /// `→ done`: the API applied the row's operation (or a lookup found its create applied).
    pub fn done(http_status: Option<u16>, job_id: i64) -> Self {
        RowUpdate {
            status: Some(Done),
            last_error: Some(None),
            http_status: Some(http_status.map(i32::from)),
            result_job_id: Some(Some(job_id)),
            in_doubt: Some(false),
            ..RowUpdate::default()
        }
    }

    /// `→ superseded`: merged into `survivor`, whose operation settled it (`job_id` when known).
    pub fn superseded_by(survivor: i64, why: Option<&str>, job_id: Option<i64>) -> Self {
        let reason = match why {
            Some(why) => format!("merged into outbox row {survivor}{why}"),
            None => format!("merged into outbox row {survivor}"),
        };
        RowUpdate {
            status: Some(Superseded),
            last_error: Some(Some(reason)),
            result_job_id: Some(job_id),
            in_doubt: Some(false),
            ..RowUpdate::default()
        }
    }

    /// `→ failed`, for good (until an operator's `outbox retry`), with the reason.
    pub fn failed(reason: String, http_status: Option<u16>) -> Self {
        RowUpdate {
            status: Some(Failed),
            last_error: Some(Some(reason)),
            http_status: Some(http_status.map(i32::from)),
            ..RowUpdate::default()
        }
    }

    /// `→ pending`, not before `at`: the request surely was not applied (or is harmless to
    /// repeat) and failed retryably; `attempts` counts the cycles that tried.
    pub fn retry_later(reason: String, http_status: Option<u16>, attempts: i32, at: Ts) -> Self {
        RowUpdate {
            status: Some(Pending),
            attempts: Some(attempts),
            last_error: Some(Some(reason)),
            http_status: Some(http_status.map(i32::from)),
            next_attempt_at: Some(at),
            in_doubt: Some(false),
            ..RowUpdate::default()
        }
    }

    /// Stays `in_flight`, in doubt: the create may or may not have been applied; it is looked up
    /// (from `look_after` on) before anything is sent again.
    pub fn in_doubt(
        reason: String,
        http_status: Option<u16>,
        attempts: i32,
        look_after: Ts,
    ) -> Self {
        RowUpdate {
            status: Some(InFlight),
            attempts: Some(attempts),
            last_error: Some(Some(reason)),
            http_status: Some(http_status.map(i32::from)),
            next_attempt_at: Some(look_after),
            in_doubt: Some(true),
            ..RowUpdate::default()
        }
    }

    /// Stays in doubt: the lookup itself failed; the next one waits until `at`.
    pub fn lookup_failed(reason: String, attempts: i32, at: Ts) -> Self {
        RowUpdate {
            attempts: Some(attempts),
            last_error: Some(Some(reason)),
            next_attempt_at: Some(at),
            ..RowUpdate::default()
        }
    }

    /// Stays in doubt: a lookup did not find the job, but too soon after the first send to be
    /// sure it never will (a slow commit); looked up again at `at`, before any re-send.
    pub fn absent_so_far(reason: String, at: Ts) -> Self {
        RowUpdate {
            last_error: Some(Some(reason)),
            next_attempt_at: Some(at),
            ..RowUpdate::default()
        }
    }

    /// `in_flight → pending`, no longer in doubt: a lookup found no such job upstream, so the
    /// create was never applied and may be sent again now.
    pub fn absent(now: Ts) -> Self {
        RowUpdate {
            status: Some(Pending),
            next_attempt_at: Some(now),
            in_doubt: Some(false),
            ..RowUpdate::default()
        }
    }

    /// `in_flight → pending`, linked to `job_id`: a lookup found the create applied, but the
    /// job lacks some of the fields sent; the planner sends them as a patch of that job.
    pub fn linked(job_id: i64, now: Ts) -> Self {
        RowUpdate {
            status: Some(Pending),
            result_job_id: Some(Some(job_id)),
            next_attempt_at: Some(now),
            in_doubt: Some(false),
            ..RowUpdate::default()
        }
    }

    /// `→ pending` as it was: the token was refused, nothing was applied.
    pub fn waiting_for_token(now: Ts) -> Self {
        RowUpdate {
            status: Some(Pending),
            next_attempt_at: Some(now),
            in_doubt: Some(false),
            ..RowUpdate::default()
        }
    }

    /// `in_flight → pending` as it was: the request never left (a stop came first). A create
    /// marked for its first send is again one never sent (`first_sent_at` cleared), so that an
    /// unqueue can still cancel it and a 400 is taken as the API's answer to a first send.
    pub fn not_sent(now: Ts, first_send: bool) -> Self {
        RowUpdate {
            status: Some(Pending),
            next_attempt_at: Some(now),
            in_doubt: Some(false),
            first_sent_at: first_send.then_some(None),
            ..RowUpdate::default()
        }
    }

    /// With the number of attempts made so far.
    pub fn counting(mut self, attempts: i32) -> Self {
        self.attempts = Some(attempts);
        self
    }

    /// `→ pending` now, unlinked: the job a create was linked to is gone upstream, so the create
    /// is sent again.
    pub fn job_gone(reason: String, now: Ts) -> Self {
        RowUpdate {
            status: Some(Pending),
            last_error: Some(Some(reason)),
            result_job_id: Some(None),
            next_attempt_at: Some(now),
            in_doubt: Some(false),
            ..RowUpdate::default()
        }
    }
}

/// Applies one transition to several rows.
pub fn update(conn: &mut Conn, ids: &[i64], change: &RowUpdate) -> Result<usize, DbError> {
    let mut change = change.clone();
    change.updated_at.get_or_insert_with(Ts::now);
    with_conn!(conn, |c| {
        let mut n = 0;
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            n += diesel::update(outbox::table.filter(outbox::id.eq_any(chunk)))
                .set(&change)
                .execute(c)?;
        }
        Ok(n)
    })
}

/// `failed → pending`, an operator's re-queue: the given failed rows (or all), attempts reset.
/// A create still in doubt stays so, and is looked up before it is sent again.
pub fn retry(conn: &mut Conn, ids: Option<&[i64]>) -> Result<usize, DbError> {
    match ids {
        Some(ids) => Ok(retry_ids(conn, ids)?.len()),
        None => {
            let change = requeue(Ts::now());
            with_conn!(conn, |c| Ok(diesel::update(
                outbox::table.filter(outbox::status.eq(Failed))
            )
            .set(change)
            .execute(c)?))
        }
    }
}

/// [`retry`] of the given rows: the ids of those re-queued (the failed ones among them), in
/// id order. The others do not exist or are not failed.
pub fn retry_ids(conn: &mut Conn, ids: &[i64]) -> Result<Vec<i64>, DbError> {
    let change = requeue(Ts::now());
    let mut requeued = with_conn!(conn, |c| {
        let mut requeued: Vec<i64> = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let failed = outbox::table
                .filter(outbox::status.eq(Failed))
                .filter(outbox::id.eq_any(chunk));
            requeued.extend(
                diesel::update(failed)
                    .set(change)
                    .returning(outbox::id)
                    .get_results::<i64>(c)?,
            );
        }
        Ok::<_, DbError>(requeued)
    })?;
    requeued.sort_unstable();
    requeued.dedup();
    Ok(requeued)
}

/// The columns an operator's re-queue sets.
#[allow(clippy::type_complexity)]
fn requeue(
    now: Ts,
) -> (
    diesel::dsl::Eq<outbox::status, OutboxStatus>,
    diesel::dsl::Eq<outbox::attempts, i32>,
    diesel::dsl::Eq<outbox::next_attempt_at, Ts>,
    diesel::dsl::Eq<outbox::updated_at, Ts>,
) {
    (
        outbox::status.eq(Pending),
        outbox::attempts.eq(0),
        outbox::next_attempt_at.eq(now),
        outbox::updated_at.eq(now),
    )
}

/// Rows by id (those that exist).
pub fn get_many(conn: &mut Conn, ids: &[i64]) -> Result<Vec<OutboxRow>, DbError> {
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let query = outbox::table
            .filter(outbox::id.eq_any(chunk))
            .order(outbox::id.asc());
        // A payload that is not UTF-8 is shown with U+FFFD in place of its bad bytes.
        let part: Vec<OutboxRow> = with_conn!(
            &mut *conn,
            sqlite
                | c
                | query
                    .select((
                        (
                            outbox::id,
                            outbox::op,
                            outbox::campaign,
                            outbox::reference,
                            outbox::job_id,
                            lossy_payload(),
                            outbox::status,
                            outbox::attempts,
                            outbox::last_error,
                        ),
                        (
                            outbox::http_status,
                            outbox::result_job_id,
                            outbox::created_at,
                            outbox::updated_at,
                            outbox::next_attempt_at,
                            outbox::first_sent_at,
                            outbox::in_doubt,
                            outbox::merged_into,
                        ),
                    ))
                    .load::<(OutboxHead, OutboxTail)>(c)?
                    .into_iter()
                    .map(OutboxRow::from)
                    .collect(),
            postgres | c | query.select(OutboxRow::as_select()).load(c)?,
        );
        rows.extend(part);
    }
    rows.sort_unstable_by_key(|r| r.id);
    Ok(rows)
}

type OutboxHead = (
    i64,
    String,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Vec<u8>,
    OutboxStatus,
    i32,
    Option<String>,
);
type OutboxTail = (
    Option<i32>,
    Option<i64>,
    Ts,
    Ts,
    Ts,
    Option<Ts>,
    bool,
    Option<i64>,
);

impl From<(OutboxHead, OutboxTail)> for OutboxRow {
    fn from((h, t): (OutboxHead, OutboxTail)) -> Self {
        OutboxRow {
            id: h.0,
            op: h.1,
            campaign: h.2,
            reference: h.3,
            job_id: h.4,
            payload: lossy(h.5),
            status: h.6,
            attempts: h.7,
            last_error: h.8,
            http_status: t.0,
            result_job_id: t.1,
            created_at: t.2,
            updated_at: t.3,
            next_attempt_at: t.4,
            first_sent_at: t.5,
            in_doubt: t.6,
            merged_into: t.7,
        }
    }
}

/// A `done` create as `verify` audits it: the reference it sent and the job it settled on.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct DoneCreate {
    pub id: i64,
    pub reference: Option<String>,
    /// The body as sent when it was not the row's own payload (see [`mark_sent`]).
    pub sent_payload: Option<String>,
    pub result_job_id: Option<i64>,
}

impl DoneCreate {
    /// The reference the create sent: `sent_payload`'s when it has one, else the row's own.
    pub fn reference_sent(&self) -> Option<String> {
        let sent = self
            .sent_payload
            .as_deref()
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .and_then(|v| v.get("reference")?.as_str().map(str::to_string));
        sent.or_else(|| self.reference.clone())
    }
}

/// `done` creates of `campaign` with an id above `after`, in id order, at most `limit`.
pub fn done_creates_after(
    conn: &mut Conn,
    campaign: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<DoneCreate>, DbError> {
    with_conn!(conn, |c| Ok(outbox::table
        .filter(outbox::op.eq("create"))
        .filter(outbox::status.eq(Done))
        .filter(outbox::campaign.eq(campaign))
        .filter(outbox::id.gt(after))
        .order(outbox::id.asc())
        .limit(limit)
        .select((
            outbox::id,
            outbox::reference,
            outbox::sent_payload,
            outbox::result_job_id,
        ))
        .load(c)?))
}

/// An `in_flight` row as `verify` reports it.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct InFlightRow {
    pub id: i64,
    pub campaign: Option<i64>,
    pub reference: Option<String>,
    pub job_id: Option<i64>,
    pub result_job_id: Option<i64>,
}

/// Rows `in_flight` whose `next_attempt_at` is before `deadline_before`: how many, and the first
/// `limit` of them in id order. With `campaigns`, only rows naming one of them (by `campaign`, or
/// by a `job_id` the mirror holds in one of them).
pub fn in_flight_due_before(
    conn: &mut Conn,
    deadline_before: Ts,
    campaigns: Option<&[i64]>,
    limit: i64,
) -> Result<(i64, Vec<InFlightRow>), DbError> {
    use crate::db::schema::jobs;
    macro_rules! filtered {
        () => {{
            let mut query = outbox::table
                .filter(outbox::status.eq(InFlight))
                .filter(outbox::next_attempt_at.lt(deadline_before))
                .into_boxed();
            if let Some(list) = campaigns {
                let of_campaigns = jobs::table
                    .filter(jobs::campaign.eq_any(list.to_vec()))
                    .select(jobs::id.nullable());
                query = query.filter(
                    outbox::campaign
                        .eq_any(list.to_vec())
                        .or(outbox::job_id.eq_any(of_campaigns)),
                );
            }
            query
        }};
    }
    with_conn!(conn, |c| {
        let count: i64 = filtered!().count().get_result(c)?;
        let rows = filtered!()
            .order(outbox::id.asc())
            .limit(limit)
            .select((
                outbox::id,
                outbox::campaign,
                outbox::reference,
                outbox::job_id,
                outbox::result_job_id,
            ))
            .load(c)?;
        Ok((count, rows))
    })
}
