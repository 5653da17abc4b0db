//! UniFFI bindings of the `hearth` facade (work in progress).
uniffi::setup_scaffolding!();
