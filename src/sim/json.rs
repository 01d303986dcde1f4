//! A job's JSON written by hand, byte for byte what `serde_json::to_vec(&job)` writes (a test
//! holds them equal): seeding a million jobs in a debug build takes seconds this way, where
//! serde's layers of generic calls, unoptimised, took half a minute.

use crate::job::{Job, Object, Time, job_fields};
use chrono::SecondsFormat;

macro_rules! write_job {
    (
        key $id:ident : $id_ty:ty = $($id_rule:ident)*;
        $( $(#[$attr:meta])* $f:ident : $ty:ty = $($rule:ident)* ),* $(,)?
    ) => {
        /// Every field of the job's table, in its order, as `"name":value` after the `{`.
        fn write_fields(job: &Job, out: &mut Vec<u8>) {
            out.extend_from_slice(concat!("\"", stringify!($id), "\":").as_bytes());
            job.$id.write_json(out);
            $(
                out.extend_from_slice(concat!(",\"", stringify!($f), "\":").as_bytes());
                job.$f.write_json(out);
            )*
        }
    };
}
job_fields!(write_job);

pub fn job_to_json(job: &Job) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.push(b'{');
    write_fields(job, &mut out);
    out.push(b'}');
    out
}

/// A wire value written as serde writes it.
trait WriteJson {
    fn write_json(&self, out: &mut Vec<u8>);
}

impl WriteJson for i64 {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes());
    }
}

impl WriteJson for i32 {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes());
    }
}

impl<T: WriteJson> WriteJson for Option<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            None => out.extend_from_slice(b"null"),
            Some(value) => value.write_json(out),
        }
    }
}

impl WriteJson for String {
    fn write_json(&self, out: &mut Vec<u8>) {
        string(out, self);
    }
}

impl WriteJson for Vec<String> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, item) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, item);
        }
        out.push(b']');
    }
}

impl WriteJson for Time {
    /// What chrono's `Serialize` writes.
    fn write_json(&self, out: &mut Vec<u8>) {
        string(out, &self.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    }
}

impl WriteJson for Object {
    fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("a map serialises");
    }
}

impl WriteJson for f64 {
    fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("a float serialises");
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        serde_json::to_writer(&mut *out, s).expect("a string serialises");
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_exactly_what_serde_writes() {
        let jobs = [
            json!({"id": 1, "campaign": 28, "state": 0}),
            json!({
                "id": 14, "campaign": 28, "reference": "1234567", "name": "Chloé \"Coco\" Lefèvre\\",
                "email": "a@b.c", "numbers": ["+33123456789", "+33612345678"], "address_lines": [],
                "postal_code": "75001", "city": "Paris\n", "country": "FR",
                "appointment": "2024-05-10T14:00:00+02:00", "data": {"b": [1, null], "a": "\u{1}"},
                "label": "vip", "url": "https://x/\u{7f}", "value": 123.45, "state": 3,
                "created_at": "2016-11-04T19:11:34.985Z"
            }),
            json!({"id": -2, "campaign": 1, "state": 4, "value": 1e21, "numbers": [],
                "created_at": "2016-11-04T19:11:34Z", "appointment": "2016-11-04T19:11:34.000001Z",
                "data": {}}),
            json!({"id": 3, "campaign": 1, "state": 1, "value": 0.1, "address_lines": ["1 rue Toto", ""]}),
        ];
        for value in jobs {
            let job: Job = serde_json::from_value(value).unwrap();
            let ours = String::from_utf8(job_to_json(&job)).unwrap();
            assert_eq!(ours, serde_json::to_string(&job).unwrap());
        }
    }
}
