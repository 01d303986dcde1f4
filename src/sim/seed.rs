//! Deterministic starting jobs: the same seed always gives the same names, numbers, references
//! (`seed-<campaign>-<n>`), states and dates relative to the start.

use super::state::Store;
use crate::api::models::{Job, state};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Map, Value, json};

pub const FIRST_NAMES: [&str; 12] = [
    "Simon", "Alice", "Camille", "Louis", "Emma", "Hugo", "Chloé", "Léa", "Jules", "Manon",
    "Nathan", "Inès",
];
pub const LAST_NAMES: [&str; 12] = [
    "Dupont", "Schmitt", "Martin", "Bernard", "Petit", "Durand", "Leroy", "Moreau", "Simon",
    "Laurent", "Lefèvre", "Garcia",
];
pub const CITIES: [(&str, &str); 6] = [
    ("Paris", "75001"),
    ("Lyon", "69002"),
    ("Marseille", "13001"),
    ("Lille", "59000"),
    ("Nantes", "44000"),
    ("Bordeaux", "33000"),
];
pub const LABELS: [&str; 4] = ["gold", "silver", "callback", "vip"];

/// How far back seeded jobs were created.
const CREATED_WITHIN: Duration = Duration::days(7);

pub fn seed_jobs(
    store: &mut Store,
    campaigns: &[i64],
    per_campaign: usize,
    seed: u64,
    now: DateTime<Utc>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    for &campaign in campaigns {
        for n in 1..=per_campaign {
            let id = store.next_id();
            let (job, modified_at) = seeded_job(&mut rng, id, campaign, n, now);
            store
                .insert_raw(job, modified_at)
                .expect("seeded references are unique");
        }
    }
}

fn seeded_job(
    rng: &mut StdRng,
    id: i64,
    campaign: i64,
    n: usize,
    now: DateTime<Utc>,
) -> (Job, DateTime<Utc>) {
    let first = FIRST_NAMES[rng.gen_range(0..FIRST_NAMES.len())];
    let last = LAST_NAMES[rng.gen_range(0..LAST_NAMES.len())];
    let reference = format!("seed-{campaign}-{n}");
    let numbers = (0..rng.gen_range(1..=2))
        .map(|_| random_number(rng))
        .collect();
    let with_address = rng.gen_bool(0.4);
    let (city, postal_code) = CITIES[rng.gen_range(0..CITIES.len())];
    let age = Duration::milliseconds(rng.gen_range(0..CREATED_WITHIN.num_milliseconds()));
    let created_at = (now - age).trunc_subsecs(3);
    let modified_at =
        created_at + Duration::milliseconds(rng.gen_range(0..=age.num_milliseconds()));
    let job = Job {
        id,
        campaign,
        reference: Some(reference.clone()),
        name: Some(format!("{first} {last}")),
        email: Some(format!("{}.{}{n}@example.com", ascii(first), ascii(last))),
        numbers: Some(numbers),
        address_lines: Some(if with_address {
            vec![format!("{} rue de la Paix", rng.gen_range(1..200))]
        } else {
            vec![]
        }),
        postal_code: with_address.then(|| postal_code.to_string()),
        city: with_address.then(|| city.to_string()),
        country: with_address.then(|| "FR".to_string()),
        appointment: None,
        data: rng.gen_bool(0.25).then(|| seeded_data(rng)),
        label: rng
            .gen_bool(0.25)
            .then(|| LABELS[rng.gen_range(0..LABELS.len())].to_string()),
        url: Some(format!("https://crm.example.com/customers/{reference}")),
        value: rng
            .gen_bool(0.5)
            .then(|| f64::from(rng.gen_range(100..100_000)) / 100.0),
        state: seeded_state(rng),
        created_at: Some(created_at),
    };
    (job, modified_at)
}

/// Mostly queued, as in a campaign under way; some already called.
fn seeded_state(rng: &mut StdRng) -> i32 {
    match rng.gen_range(0..100) {
        0..80 => state::QUEUED,
        80..85 => state::CALLING,
        85..95 => state::SUCCEEDED,
        _ => state::FAILED,
    }
}

fn seeded_data(rng: &mut StdRng) -> Map<String, Value> {
    let mut data = Map::new();
    data.insert("source".into(), json!("seed"));
    data.insert("score".into(), json!(rng.gen_range(0..100)));
    data
}

/// A French mobile or landline number in E.164.
pub fn random_number(rng: &mut impl Rng) -> String {
    format!(
        "+33{}{:08}",
        rng.gen_range(1..=7),
        rng.gen_range(0..100_000_000)
    )
}

fn ascii(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'é' | 'è' => 'e',
            other => other,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_jobs() {
        let now = Utc::now();
        let seeded = |seed| {
            let mut store = Store::new(&[28, 29]);
            seed_jobs(&mut store, &[28, 29], 50, seed, now);
            store.list(None, None)
        };
        let a = seeded(7);
        assert_eq!(a.len(), 100);
        assert_eq!(a, seeded(7));
        assert_ne!(a, seeded(8));
        assert_eq!(a[0].reference.as_deref(), Some("seed-28-1"));
        assert_eq!(a[99].reference.as_deref(), Some("seed-29-50"));
        assert_eq!((a[0].id, a[99].id), (1, 100));
        assert!(a.iter().any(|j| j.label.is_some() && j.data.is_some()));
        assert!(a.iter().any(|j| j.city.is_some() && j.value.is_some()));
        assert!(a.iter().all(|j| j.created_at.unwrap() <= now));
        assert!(a.iter().all(|j| j.email.as_deref().unwrap().is_ascii()));
    }
}
