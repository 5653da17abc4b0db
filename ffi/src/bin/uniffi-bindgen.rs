//! Generates the foreign-language bindings of hearth-ffi.
fn main() {
    uniffi::uniffi_bindgen_main()
}
