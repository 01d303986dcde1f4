//! Life on the platform's side: the dialer moving jobs queued → calling → succeeded/failed, and
//! people editing jobs in the platform's UI.

use super::Sim;
use super::seed::{CITIES, LABELS, LAST_NAMES, random_number};
use crate::job::{Job, state};
use rand::Rng;
use rand::seq::SliceRandom;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Starts the periodic dialer, unless `interval_ms` is 0.
pub fn start(sim: Arc<Sim>, interval_ms: u64) -> Option<JoinHandle<()>> {
    if interval_ms == 0 {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(interval_ms));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let active = sim.store().active_ids().len();
            // About 2% of the active jobs per tick, so small and large campaigns both move.
            let moved = dial(&sim, (active / 50).clamp(1, 25));
            if !moved.is_empty() {
                tracing::debug!(moved = moved.len(), "dialer tick");
            }
        }
    }))
}

/// Moves up to `n` random queued or calling jobs one step; answers the jobs as they now are.
pub fn dial(sim: &Sim, n: usize) -> Vec<Job> {
    let mut store = sim.store();
    let chosen = choose(sim, store.active_ids(), n);
    let now = sim.clock.now();
    chosen
        .into_iter()
        .filter_map(|id| {
            let next = match store.get(id)?.state {
                state::QUEUED => state::CALLING,
                _ if sim.rng().gen_bool(0.6) => state::SUCCEEDED,
                _ => state::FAILED,
            };
            store.set_state(id, next, now)
        })
        .collect()
}

/// Changes up to `n` random jobs as a person in the platform's UI would: a new city, label,
/// name or phone number.
pub fn edit(sim: &Sim, n: usize) -> Vec<Job> {
    let mut store = sim.store();
    let chosen = choose(sim, store.ids(), n);
    let now = sim.clock.now();
    chosen
        .into_iter()
        .filter_map(|id| {
            let mut job = store.get(id)?;
            change_something(&mut job, &mut *sim.rng());
            store.insert_raw(&job, now).ok()?;
            Some(job)
        })
        .collect()
}

fn choose(sim: &Sim, ids: Vec<i64>, n: usize) -> Vec<i64> {
    let mut chosen: Vec<i64> = ids.choose_multiple(&mut *sim.rng(), n).copied().collect();
    chosen.sort_unstable();
    chosen
}

/// One visible change; always a real change, so `modified_at` moving is never a lie.
fn change_something(job: &mut Job, rng: &mut impl Rng) {
    match rng.gen_range(0..4) {
        0 => {
            let (city, postal_code) = CITIES[rng.gen_range(0..CITIES.len())];
            let moved = job.city.as_deref() != Some(city);
            job.city = Some(if moved {
                city.into()
            } else {
                format!("{city} Cedex")
            });
            job.postal_code = Some(postal_code.into());
        }
        1 => {
            let label = LABELS[rng.gen_range(0..LABELS.len())];
            job.label = match job.label.as_deref() {
                Some(current) if current == label => None,
                _ => Some(label.into()),
            };
        }
        2 => {
            let first = job
                .name
                .as_deref()
                .and_then(|n| n.split_whitespace().next())
                .unwrap_or("Client")
                .to_string();
            let last = LAST_NAMES[rng.gen_range(0..LAST_NAMES.len())];
            let renamed = format!("{first} {last}-{}", rng.gen_range(1..1000));
            job.name = Some(renamed);
        }
        _ => job
            .numbers
            .get_or_insert_with(Vec::new)
            .push(random_number(rng)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn job() -> Job {
        serde_json::from_value(serde_json::json!({
            "id": 1, "campaign": 28, "state": 0, "name": "Simon Dupont", "city": "Paris",
            "label": "vip", "numbers": ["+33612345678"]
        }))
        .unwrap()
    }

    #[test]
    fn every_edit_changes_the_job() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let before = job();
            let mut after = before.clone();
            change_something(&mut after, &mut rng);
            assert_ne!(before, after);
            assert_eq!((after.id, after.state), (before.id, before.state));
        }
    }
}
