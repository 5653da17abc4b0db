//! `hearth chat` driven in-process on ratatui's test backend.
