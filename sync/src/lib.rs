//! Hearth sync.
