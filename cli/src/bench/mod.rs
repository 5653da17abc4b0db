//! `hearth bench`: the benchmark report.
pub mod sqlite;
