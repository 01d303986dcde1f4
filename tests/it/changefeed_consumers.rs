//! Changefeed consumers (issue 29): `changes --consumer`, NOTIFY wake-ups, retention.
