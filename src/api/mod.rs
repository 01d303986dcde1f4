//! The Jobs API: wire models shared with the simulator, and the resilient client.

pub mod models;
