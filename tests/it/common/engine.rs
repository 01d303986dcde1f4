//! Sync engines and clients against the simulator, as the pull and push tests build them.

use super::{TestDb, client, options};
use jobsync::api::ApiClient;
use jobsync::config::{PushConfig, SyncConfig};
use jobsync::db::Db;
use jobsync::shutdown::StopFlag;
use jobsync::sim::SimHandle;
use jobsync::sync::cycle::{CycleSummary, Engine, Trigger};
use std::time::Duration;

/// An engine on `db` with `client`, the given sync settings and the default push settings.
pub fn engine_with(db: &Db, client: ApiClient, sync: SyncConfig) -> Engine {
    Engine {
        db: db.clone(),
        client,
        sync,
        push: PushConfig::default(),
        stop: StopFlag::new(),
    }
}

/// An engine pulling `campaigns` from `sim` into `t` with the given watermark overlap.
pub fn engine(t: &TestDb, sim: &SimHandle, campaigns: &[i64], overlap_secs: u64) -> Engine {
    engine_with(
        &t.db,
        client(sim),
        SyncConfig {
            campaigns: campaigns.to_vec(),
            overlap_secs,
            ..SyncConfig::default()
        },
    )
}

/// One cycle, which must succeed.
pub async fn cycle(engine: &Engine) -> CycleSummary {
    let summary = engine
        .cycle(Trigger::Once)
        .run()
        .await
        .expect("a cycle runs");
    assert!(summary.ok, "cycle failed: {:?}", summary.error);
    summary
}

/// A client that gives up quickly (two attempts, small calls), so that faults reach the push
/// rather than being absorbed by the client's own retries.
pub fn impatient_client(sim: &SimHandle, timeout: Duration, bulk_size: usize) -> ApiClient {
    let mut opts = options(sim, "dev-token");
    opts.max_attempts = 2;
    opts.bulk_size = bulk_size;
    opts.timeout = timeout;
    ApiClient::new(opts).unwrap()
}
