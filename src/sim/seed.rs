//! Deterministic starting jobs: the same seed always gives the same names, numbers, references
//! (`seed-<campaign>-<n>`), states and dates relative to the start.

use super::state::Store;
use crate::job::{Job, state};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use rand::Rng;
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
    let mut rng = SeedRng(seed);
    for &campaign in campaigns {
        for n in 1..=per_campaign {
            let id = store.next_id();
            let (job, modified_at) = seeded_job(&mut rng, id, campaign, n, now);
            store
                .insert_raw(&job, modified_at)
                .expect("seeded references are unique");
        }
    }
}

/// SplitMix64: deterministic and, unlike `StdRng`, cheap even unoptimised, which matters when a
/// debug build seeds a million jobs.
struct SeedRng(u64);

impl SeedRng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn seeded_job(
    rng: &mut SeedRng,
    id: i64,
    campaign: i64,
    n: usize,
    now: DateTime<Utc>,
) -> (Job, DateTime<Utc>) {
    let first = *rng.pick(&FIRST_NAMES);
    let last = *rng.pick(&LAST_NAMES);
    let reference = format!("seed-{campaign}-{n}");
    let numbers = (0..1 + rng.below(2))
        .map(|_| french_number(1 + rng.below(7), rng.below(100_000_000)))
        .collect();
    let with_address = rng.percent(40);
    let (city, postal_code) = *rng.pick(&CITIES);
    let age_ms = rng.below(CREATED_WITHIN.num_milliseconds() as u64) as i64;
    let created_at = (now - Duration::milliseconds(age_ms)).trunc_subsecs(3);
    let modified_at = created_at + Duration::milliseconds(rng.below(age_ms as u64 + 1) as i64);
    let job = Job {
        id,
        campaign,
        reference: Some(reference.clone()),
        name: Some(format!("{first} {last}")),
        email: Some(format!("{}.{}{n}@example.com", ascii(first), ascii(last))),
        numbers: Some(numbers),
        address_lines: Some(if with_address {
            vec![format!("{} rue de la Paix", 1 + rng.below(199))]
        } else {
            vec![]
        }),
        postal_code: with_address.then(|| postal_code.to_string()),
        city: with_address.then(|| city.to_string()),
        country: with_address.then(|| "FR".to_string()),
        data: rng.percent(25).then(|| seeded_data(rng)),
        label: rng.percent(25).then(|| rng.pick(&LABELS).to_string()),
        url: Some(format!("https://crm.example.com/customers/{reference}")),
        value: rng
            .percent(50)
            .then(|| (100 + rng.below(99_900)) as f64 / 100.0),
        state: seeded_state(rng),
        created_at: Some(created_at),
        // Every other field of the job model (`appointment`, and any field added to its table)
        // starts null.
        ..Job::default()
    };
    (job, modified_at)
}

/// Mostly queued, as in a campaign under way; some already called.
fn seeded_state(rng: &mut SeedRng) -> i32 {
    match rng.below(100) {
        0..80 => state::QUEUED,
        80..85 => state::CALLING,
        85..95 => state::SUCCEEDED,
        _ => state::FAILED,
    }
}

fn seeded_data(rng: &mut SeedRng) -> Map<String, Value> {
    let mut data = Map::new();
    data.insert("source".into(), json!("seed"));
    data.insert("score".into(), json!(rng.below(100)));
    data
}

/// A random French number in E.164 (kind 1–5 landline, 6–7 mobile).
pub fn random_number(rng: &mut impl Rng) -> String {
    french_number(rng.gen_range(1..=7), rng.gen_range(0..100_000_000))
}

fn french_number(kind: u64, subscriber: u64) -> String {
    format!("+33{kind}{subscriber:08}")
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
            let jobs: Vec<Job> = store
                .list(None, None)
                .iter()
                .map(|j| serde_json::from_slice(j).unwrap())
                .collect();
            jobs
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
