//! A faithful local stand-in for the Jobs API (SPEC §6).
