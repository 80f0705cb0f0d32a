//! libFuzzer entry for [`fencegate_fuzz::annotation`].
#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fencegate_fuzz::annotation(data));
