//! The webhook sink against a receiver that misbehaves (issue 29).
